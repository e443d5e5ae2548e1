"""Image prompt throughput: phiquant (libmtmd through llama-cpp-python) vs llama.cpp's own llama-mtmd-cli,
same GGUF and mmproj files, same image, same thread count, in one run.

    python benchmarks/vision_throughput.py [--threads 2] [--repeats 5] [--width 320 --height 256]

Builds the Phi-4-reasoning-vision test fixture (tiny sizes), converts it (F16 language model, F16 mmproj),
then measures for each side: the image encode time (the vision tower and projector, ms) and the prompt
throughput (positions decoded into the context per second, llama.cpp's prompt-eval counters: the image
embeddings and the text).  llama-mtmd-cli's figures are read from its own log with -v ("mtmd batch encoding done in",
llama_perf_context_print's "prompt eval time"); phiquant's encode is timed around mtmd_encode_chunk, and its prompt rate is the
positions over the prompt's evaluation time less that encode time (the contexts phiquant makes keep
llama.cpp's perf counters off).  Medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.fixtures.image_files import noise_image  # noqa: E402
from tests.fixtures.phi4v_checkpoints import PHI4_REASONING_VISION, build_phi4v_checkpoint  # noqa: E402

from benchmarks.llama_tools import tool  # noqa: E402
from phiquant import api  # noqa: E402
from phiquant.runtime.images import read_image_file  # noqa: E402
from phiquant.runtime.llama import LoadedModel, capture_llama_log  # noqa: E402
from phiquant.runtime.prompt import PromptTokenizer  # noqa: E402
from phiquant.runtime.vision import VisionProjector  # noqa: E402

QUESTION = "Describe this picture."
# libmtmd's helper logs this for both sides: the image's positions decoded into the context
IMAGE_DECODED = re.compile(r"image decoded \(batch 1/1\) in (\d+) ms")


def phiquant_figures(model: Path, mmproj: Path, image: Path, threads: int, repeats: int) -> dict[str, float]:
    from phiquant.gguf_io import read_gguf

    picture = read_image_file(image)
    encode_ms, prompt_rates, image_rates, positions, image_positions = [], [], [], 0, 0
    with LoadedModel(model) as loaded, VisionProjector(mmproj, loaded, threads=threads) as vision:
        tokenizer = PromptTokenizer(loaded, read_gguf(model))
        text = tokenizer.render([{"role": "user", "content": f"{vision.marker}\n{QUESTION}"}])
        for _ in range(repeats):
            prompt = vision.build_prompt(text, [picture], tokenizer.tokenize)
            try:
                started = time.perf_counter()
                vision.encode(prompt.images[0])
                encode_ms.append(1000 * (time.perf_counter() - started))
                with loaded.new_context(2048, n_threads=threads) as context:
                    # evaluate encodes the image again; prompt eval = the rest, as llama-mtmd-cli counts it
                    started = time.perf_counter()
                    with capture_llama_log() as lines:
                        vision.evaluate(context, prompt)
                    seconds = time.perf_counter() - started - encode_ms[-1] / 1000
                    decoded = IMAGE_DECODED.search("".join(lines))
                    image_positions = prompt.images[0].n_pos
                    if decoded:
                        image_rates.append(image_positions / (int(decoded.group(1)) / 1000))
                    prompt_rates.append(context.n_past / seconds)
                    positions = context.n_past
            finally:
                prompt.close()
    return {
        "encode_ms": statistics.median(encode_ms),
        "prompt_tps": statistics.median(prompt_rates),
        "image_tps": statistics.median(image_rates) if image_rates else float("nan"),
        "positions": positions,
        "image_positions": image_positions,
    }


def llama_cpp_figures(
    model: Path, mmproj: Path, image: Path, threads: int, repeats: int, image_positions: int
) -> dict[str, float]:
    cli = tool("llama-mtmd-cli")
    encode_ms, prompt_rates, image_rates, positions = [], [], [], 0
    for _ in range(repeats):
        run = subprocess.run(
            [str(cli), "-m", str(model), "--mmproj", str(mmproj), "--image", str(image), "-p", QUESTION,
             "-n", "1", "-t", str(threads), "-tb", str(threads), "--temp", "0", "-c", "2048", "--no-warmup", "-v"],
            capture_output=True, text=True, errors="replace", timeout=600, check=True,
        )  # fmt: skip
        log = run.stdout + run.stderr
        encoded = re.search(r"(?:mtmd batch encoding done|image slice encoded) in (\d+) ms", log)
        evaluated = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
        if not encoded or not evaluated:
            raise SystemExit("llama-mtmd-cli printed no timings:\n" + log[-2000:])
        encode_ms.append(float(encoded.group(1)))
        seconds, positions = float(evaluated.group(1)) / 1000, int(evaluated.group(2))
        prompt_rates.append(positions / seconds)
        decoded = IMAGE_DECODED.search(log)
        if decoded:
            image_rates.append(image_positions / (int(decoded.group(1)) / 1000))
    return {
        "encode_ms": statistics.median(encode_ms),
        "prompt_tps": statistics.median(prompt_rates),
        "image_tps": statistics.median(image_rates) if image_rates else float("nan"),
        "positions": positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phiquant-vision-bench-") as temporary:
        root = Path(temporary)
        checkpoint = build_phi4v_checkpoint(root / PHI4_REASONING_VISION.name_or_path, PHI4_REASONING_VISION)
        converted = api.convert(checkpoint, root / "model-F16.gguf", "f16", mmproj_type="f16")
        assert converted.mmproj is not None
        image = noise_image(root / "picture.png", args.width, args.height)
        ours = phiquant_figures(converted.path, converted.mmproj, image, args.threads, args.repeats)
        theirs = llama_cpp_figures(
            converted.path, converted.mmproj, image, args.threads, args.repeats, int(ours["image_positions"])
        )
    print(f"image {args.width}x{args.height}, {args.threads} threads, median of {args.repeats}")
    print(f"{'':14}{'encode ms':>12}{'image tok/s':>13}{'prompt tok/s':>14}{'positions':>11}")
    for name, f in (("phiquant", ours), ("llama-mtmd-cli", theirs)):
        print(
            f"{name:14}{f['encode_ms']:12.1f}{f['image_tps']:13.1f}{f['prompt_tps']:14.1f}{f['positions']:11.0f}"
        )
    print(
        f"ratio (phiquant / llama.cpp): encode speed {theirs['encode_ms'] / ours['encode_ms']:.2f}x, "
        f"image positions decoded {ours['image_tps'] / theirs['image_tps']:.2f}x (both from libmtmd's own "
        f"log line), whole prompt {ours['prompt_tps'] / theirs['prompt_tps']:.2f}x (not alike: wall time "
        "less encode vs llama_perf's prompt eval)"
    )


if __name__ == "__main__":
    main()
