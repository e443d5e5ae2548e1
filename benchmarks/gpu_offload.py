"""Benchmark: generation speed with every layer on the CPU against `--gpu-layers auto`.

    python benchmarks/gpu_offload.py MODEL [--tokens 128] [--ctx 4096] [--repeats 3]

Runs the same seeded prompt with --gpu-layers 0, then auto (as many layers as fit in free GPU
memory with their KV cache), and reports prompt and generation tokens/s and the speed-up ratio.
The texts must agree up to the numerical noise of the GPU kernels, so the first differing token
is reported too.  On a llama.cpp build without GPU support, auto places 0 layers and says so.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from phiquant import api  # noqa: E402
from phiquant.runtime.generate import Completion, SamplingOptions  # noqa: E402
from phiquant.runtime.runner import RunnerOptions  # noqa: E402

PROMPT = "<|user|>\nCan you introduce .NET<|end|>\n<|assistant|>\n"


def measure(model: str, gpu_layers: int | str, args: argparse.Namespace) -> dict:
    options = RunnerOptions(n_ctx=args.ctx, gpu_layers=gpu_layers)
    sampling = SamplingOptions(temperature=0, max_tokens=args.tokens)
    with api.load(model, options) as runner:
        tokens = runner.text_tokens(PROMPT)
        runs = []
        for _ in range(args.repeats):
            completion = Completion()
            for _piece in api.generate_tokens(runner, tokens, sampling, completion=completion):
                pass
            runs.append(completion)
        return {
            "gpu_layers": runner.placement.gpu_layers,
            "placement": runner.placement.describe(),
            "prompt_tokens_per_s": statistics.median(len(tokens) / c.prompt_seconds for c in runs),
            "tokens_per_s": statistics.median(c.tokens_per_second for c in runs),
            "tokens": runs[0].tokens,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = measure(args.model, 0, args)
    auto = measure(args.model, "auto", args)
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(cpu["tokens"], auto["tokens"])) if a != b), None
    )
    print(f"{'placement':<60} {'prompt tok/s':>12} {'gen tok/s':>10}")
    for row in (cpu, auto):
        print(f"{row['placement'][:60]:<60} {row['prompt_tokens_per_s']:>12.1f} {row['tokens_per_s']:>10.1f}")
    speedup = None
    if auto["gpu_layers"] == 0:
        print("auto offloaded nothing (no GPU): both rows ran on the CPU, so there is no speed-up to report")
    else:
        speedup = round(auto["tokens_per_s"] / cpu["tokens_per_s"], 3)
        print(f"generation speed-up with auto: {speedup:.2f}x; first differing token: {first_difference}")
    for row in (cpu, auto):
        del row["tokens"]
    print(json.dumps({"cpu": cpu, "auto": auto, "speedup": speedup, "first_difference": first_difference}))


if __name__ == "__main__":
    main()
