"""Benchmark: phiquant's evaluation throughput against llama.cpp's raw batched decode, in one run.

    python benchmarks/eval_throughput.py [--windows N] [--repeats N] [--keep DIR]

The model is the bundled one when it is installed (phiquant.bundled), otherwise a random-weight
checkpoint of the same shape (Phi-3.5 architecture, hidden 256, 8 layers, vocabulary 32064), and the
text is phiquant's held-out text.  Every measurement decodes the same N windows of 512 tokens, 4 windows
per llama_decode (llama-perplexity's layout), logits for the scored second half:

  raw           llama-cpp-python's low-level API: llama_batch_init, the batch filled token by token,
                llama_decode, llama_get_logits (not even read): what llama.cpp alone costs
  eval ppl      phiquant's evaluation pass over one file, perplexity only (no reference)
  eval kld      the same with KL divergence against the F16 reference (its hidden states cached
                beforehand; each batch's reference logits rebuilt by ggml, as `phiquant eval` does)
  ladder kld    F16, Q8_0, Q4_K_M, Q2_K evaluated together against the F16 reference, vs raw decode of
                the four files one after another

Runs alternate (raw, phiquant, raw, ...) and medians are reported, since the machine is shared.
Prints a table, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import llama_cpp as lc  # noqa: E402
import numpy as np  # noqa: E402

from phiquant import api  # noqa: E402
from phiquant.bundled import heldout_text_path  # noqa: E402
from phiquant.evaluate.evaluation import tokenize_text  # noqa: E402
from phiquant.evaluate.files import describe  # noqa: E402
from phiquant.evaluate.reference import ReferenceSource  # noqa: E402
from phiquant.evaluate.runner import evaluate_pass  # noqa: E402
from phiquant.evaluate.windows import WindowPlan, plan_windows  # noqa: E402
from phiquant.progress import SILENT  # noqa: E402
from phiquant.runtime.llama import ensure_backend  # noqa: E402
from phiquant.runtime.loader import decide_extra_bufts  # noqa: E402

LADDER = ("Q8_0", "Q4_K_M", "Q2_K")
CTX = 512


def model_directory(work: Path) -> tuple[Path, str]:
    from phiquant.bundled import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR, "bundled model"
    from tests.fixtures.phi3_specs import PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    directory = work / "stand-in"
    if not directory.exists():
        build_phi3_checkpoint(
            directory,
            PHI35_MINI,
            num_hidden_layers=8,
            max_position_embeddings=4096,
            original_max_position_embeddings=512,
            shards=1,
        )
    return (
        directory,
        "random-weight stand-in of the bundled model's shape (the bundled model is not installed)",
    )


def raw_decode_seconds(path: Path, plan: WindowPlan) -> float:
    """llama.cpp alone, through llama-cpp-python's low-level API, the windows as llama-perplexity runs them."""
    ensure_backend()
    params = lc.llama_model_default_params()
    params.use_extra_bufts = decide_extra_bufts(path).use_extra_bufts  # the same kernels phiquant uses
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    n_seq = plan.windows_per_batch
    context_params = lc.llama_context_default_params()
    context_params.n_ctx = context_params.n_batch = n_seq * CTX
    context_params.n_ubatch = 512
    context_params.n_seq_max = n_seq
    context = lc.llama_init_from_model(model, context_params)
    batch = lc.llama_batch_init(n_seq * CTX, 0, n_seq)
    began = time.perf_counter()
    for start, stop in plan.batches():
        windows = plan.window_tokens(start, stop)
        lc.llama_memory_clear(lc.llama_get_memory(context), True)
        n = 0
        for seq, window in enumerate(windows.tolist()):
            for position, token in enumerate(window):
                batch.token[n] = token
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = position >= plan.first_scored
                n += 1
        batch.n_tokens = n
        if lc.llama_decode(context, batch) != 0:
            raise SystemExit("llama_decode failed")
        lc.llama_get_logits(context)
    seconds = time.perf_counter() - began
    lc.llama_batch_free(batch)
    lc.llama_free(context)
    lc.llama_model_free(model)
    return seconds


def phiquant_pass_seconds(paths: list[Path], plan: WindowPlan, reference: Path | None) -> float:
    files = [describe(p) for p in paths]
    reference_file = describe(reference) if reference else None
    if reference_file is None:
        return evaluate_pass(files, plan, None, None, n_threads=None, reporter=SILENT).seconds
    with ReferenceSource(reference_file, plan, None, SILENT) as source:
        for indices in plan.batches_of(np.arange(plan.n_windows)):
            source.hidden(indices)  # cached beforehand: the pass reads, never computes
        return evaluate_pass(files, plan, reference_file, source, n_threads=None, reporter=SILENT).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the model files here between runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint, model_note = model_directory(work)
        files_dir = work / "files"
        if not (files_dir / "done").exists():
            api.quantize(checkpoint, ["F16", *LADDER], files_dir)
            (files_dir / "done").touch()
        paths = {p.stem.rsplit("-", 1)[-1]: p for p in files_dir.glob("*.gguf")}
        f16, q4 = paths["F16"], paths["Q4_K_M"]
        ladder = [f16] + [paths[t] for t in LADDER]
        text = heldout_text_path().read_text(encoding="utf-8")
        tokens, adds_bos, bos = tokenize_text(describe(f16), text)
        plan = plan_windows(tokens, CTX, adds_bos=adds_bos, bos_id=bos, max_windows=args.windows)
        phiquant_pass_seconds([q4], plan, f16)  # warm-up: page cache, runtime probe, reference cache

        samples: dict[str, list[float]] = {k: [] for k in ("raw", "ppl", "kld", "raw ladder", "kld ladder")}
        for _ in range(args.repeats):
            samples["raw"].append(raw_decode_seconds(q4, plan))
            samples["ppl"].append(phiquant_pass_seconds([q4], plan, None))
            samples["kld"].append(phiquant_pass_seconds([q4], plan, f16))
            samples["raw ladder"].append(sum(raw_decode_seconds(p, plan) for p in ladder))
            samples["kld ladder"].append(phiquant_pass_seconds(ladder, plan, f16))

    tokens_one = plan.n_evaluated
    median = {k: statistics.median(v) for k, v in samples.items()}
    rate = {
        "raw": tokens_one / median["raw"],
        "ppl": tokens_one / median["ppl"],
        "kld": tokens_one / median["kld"],
        "raw ladder": len(ladder) * tokens_one / median["raw ladder"],
        "kld ladder": len(ladder) * tokens_one / median["kld ladder"],
    }
    result = {
        "benchmark": "eval_throughput",
        "model": model_note,
        "windows": plan.n_windows,
        "tokens_per_file": tokens_one,
        "repeats": args.repeats,
        "raw_decode_tokens_per_s": round(rate["raw"], 1),
        "eval_ppl_tokens_per_s": round(rate["ppl"], 1),
        "eval_kld_tokens_per_s": round(rate["kld"], 1),
        "raw_ladder_tokens_per_s": round(rate["raw ladder"], 1),
        "eval_kld_ladder_tokens_per_s": round(rate["kld ladder"], 1),
        "ratio_eval_ppl_vs_raw": round(rate["ppl"] / rate["raw"], 3),
        "ratio_eval_kld_vs_raw": round(rate["kld"] / rate["raw"], 3),
        "ratio_eval_kld_ladder_vs_raw": round(rate["kld ladder"] / rate["raw ladder"], 3),
    }
    print(f"model: {model_note}; {plan.n_windows} windows of {CTX} tokens, median of {args.repeats} runs")
    print(f"{'measurement':<44}{'tokens/s':>10}{'vs raw':>9}")
    rows = [
        ("raw llama_decode, Q4_K_M", rate["raw"], 1.0),
        ("phiquant eval, Q4_K_M, perplexity only", rate["ppl"], rate["ppl"] / rate["raw"]),
        ("phiquant eval, Q4_K_M, + KLD vs F16", rate["kld"], rate["kld"] / rate["raw"]),
        ("raw llama_decode, F16+Q8_0+Q4_K_M+Q2_K", rate["raw ladder"], 1.0),
        (
            "phiquant eval, the four, + KLD vs F16",
            rate["kld ladder"],
            rate["kld ladder"] / rate["raw ladder"],
        ),
    ]
    for name, value, ratio in rows:
        print(f"{name:<44}{value:>10.0f}{ratio:>8.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
