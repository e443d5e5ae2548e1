"""Benchmark: does sequential evaluation's 95% interval hold the full-text mean KLD, and its order the
full-text order?  Measured over many seeded runs.

    python benchmarks/sequential_coverage.py [--runs 100] [--rel-error 0.05] [--work DIR] [--model NAME ...]

For each model, the ladder F16 + Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K is quantized, one full pass
(phiquant's own, every window of phiquant's held-out text) gives every file's per-window means and its
full-text mean KLD, and `--runs` seeded sequential runs are replayed from those window means with the
production estimator and stopping rule (tests/evaluate/sequential_replay.py), so the runs cost no
decoding.  Models:

  bundled   the trained bundled model (phiquant.bundled), its own 8064-token vocabulary
  random    the random-weight Phi-3.5-layout test checkpoint (hidden 256, 4 layers, Phi-3's 32064-token
            vocabulary) with its output head sharpened x3 as tests/evaluate/conftest.py does: a second,
            very different model, not a trained one
  DIR       a Hugging Face checkpoint directory of phiquant's held-out text's language, e.g. the
            second trained model of the README's benchmarks (4 layers, seed 1, float32; ~20 minutes
            on 2 cores):
                python tools/train_bundled_model.py --out DIR --seed 1 --layers 4 --steps 500 --float32

Prints a table per model, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.evaluate.sequential_replay import coverage, full_pass  # noqa: E402

from phiquant import api  # noqa: E402
from phiquant.bundled import heldout_text_path  # noqa: E402

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
SHARPEN = 3.0
NAMED = ("bundled", "random")


def label(model: str) -> str:
    return model if model in NAMED else Path(model).name


def model_checkpoint(name: str, work: Path) -> Path:
    if name not in NAMED:
        if not (Path(name) / "config.json").is_file():
            raise SystemExit(f"--model {name}: neither one of {', '.join(NAMED)} nor a checkpoint directory")
        return Path(name)
    if name == "bundled":
        from phiquant.bundled import bundled_model_dir

        return bundled_model_dir()
    import torch
    from safetensors.torch import load_file
    from tests.fixtures.broken_checkpoints import rewrite_tensor, safetensors_file_holding
    from tests.fixtures.phi3_specs import PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    directory = work / "random-checkpoint"
    if not directory.exists():
        build_phi3_checkpoint(directory, PHI35_MINI)
        head = load_file(str(safetensors_file_holding(directory, "lm_head.weight")))["lm_head.weight"]
        rewrite_tensor(directory, "lm_head.weight", (head.float() * SHARPEN).to(torch.bfloat16))
    return directory


def ladder_files(name: str, work: Path) -> dict[str, Path]:
    directory = work / f"{label(name)}-ladder"
    if not directory.exists():
        written = api.quantize(model_checkpoint(name, work), ["F16", *LADDER], directory)
        return {f.type: f.path for f in written.files}
    return {p.stem.rsplit("-", 1)[1]: p for p in sorted(directory.glob("*.gguf"))}


def measure(name: str, work: Path, runs: int, rel_error: float, first_seed: int) -> dict[str, object]:
    files = ladder_files(name, work)
    saved = work / f"{label(name)}-full-pass.pickle"
    began = time.perf_counter()
    if saved.is_file():  # the window means of an earlier run on the same files
        full = pickle.loads(saved.read_bytes())
    else:
        full = full_pass([files["F16"], *(files[t] for t in LADDER)], files["F16"], heldout_text_path())
        saved.write_bytes(pickle.dumps(full))
    full_seconds = time.perf_counter() - began
    result = coverage(full, runs, rel_error, first_seed)
    return {
        "model": label(name),
        "windows_in_text": full.plan.n_windows,
        "full_pass_seconds": round(full_seconds, 1),
        "runs": runs,
        "seeds": [first_seed, first_seed + runs - 1],
        "rel_error": rel_error,
        "windows_used_median": statistics.median(result.windows_used),
        "windows_used_min": min(result.windows_used),
        "windows_used_max": max(result.windows_used),
        "order_right": result.order_right,
        "files": {
            full.types[i]: {"full_text_kld_mean": full.kld_mean[i], "covered": result.covered[i]}
            for i in range(len(full.types))
            if not full.is_reference[i]
        },
    }


def print_table(figures: dict[str, object]) -> None:
    print(
        f"\n{figures['model']}: {figures['runs']} seeded runs (seeds {figures['seeds']}) at {100 * float(figures['rel_error']):g}% "  # type: ignore[arg-type]
        f"target; windows used median {figures['windows_used_median']} "
        f"(min {figures['windows_used_min']}, max {figures['windows_used_max']}) of "
        f"{figures['windows_in_text']}; order right in {figures['order_right']}/{figures['runs']}"
    )
    print(f"{'type':8} {'full-text mean KLD':>20} {'covered':>8}")
    for file_type, row in figures["files"].items():  # type: ignore[attr-defined]
        print(f"{file_type:8} {row['full_text_kld_mean']:20.6f} {row['covered']:>5}/{figures['runs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rel-error", type=float, default=0.05)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+runs-1")
    parser.add_argument("--work", type=Path, help="keep the ladders here (default: a temporary directory)")
    parser.add_argument(
        "--model", action="append", help=f"{' or '.join(NAMED)} or a checkpoint directory (repeatable)"
    )
    args = parser.parse_args()
    models = args.model or ["bundled", "random"]
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        results = [measure(name, work, args.runs, args.rel_error, args.first_seed) for name in models]
    for figures in results:
        print_table(figures)
    print(json.dumps({"sequential_coverage": results}))


if __name__ == "__main__":
    main()
