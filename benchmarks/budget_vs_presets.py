"""Benchmark: size-budgeted files against llama.cpp's presets, with and without phiquant's importance matrix.

For each model (Hugging Face directories; default: the bundled model and the benchmark models trained by
tools/train_bundled_model.py into build/, where present):
1. convert to F16 (the reference every KL divergence is measured against);
2. compute the importance matrix over the bundled calibration text, and time the same chunks decoded
   without collection (the cost of collecting, as a ratio);
3. per imatrix mode (none / ours), quantize Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, and a budgeted file with
   --max-size equal to each preset's size; with the imatrix also IQ2_XXS and IQ1_S;
4. evaluate every file on the held-out text (never the calibration text) against the F16 file.

    python benchmarks/budget_vs_presets.py [MODEL_DIR ...] [--windows N] [--keep DIR]

The second model of the README's table (4 layers, seed 1, float32 training; ~20 minutes on 2 cores):

    python tools/train_bundled_model.py --out build/phiquant-tiny-phi35-pydocs-seed1 --seed 1 \
        --layers 4 --steps 500 --float32

Prints a table per model, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from phiquant import api  # noqa: E402
from phiquant.bundled import DEFAULT_MODEL_DIR, calibration_text_path, heldout_text_path  # noqa: E402
from phiquant.evaluate.options import EvalOptions  # noqa: E402

PRESETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M")
LOWEST = ("IQ2_XXS", "IQ1_S")
BENCHMARK_MODELS = ("phiquant-tiny-phi35-pydocs-seed1", "phiquant-tiny-phi35-pydocs-seed2")


def default_models() -> list[Path]:
    candidates = [DEFAULT_MODEL_DIR, *(ROOT / "build" / name for name in BENCHMARK_MODELS)]
    return [path for path in candidates if (path / "config.json").is_file()]


def collection_overhead(f16: Path, chunks: int) -> dict[str, float]:
    """Seconds to decode the calibration chunks plainly and while collecting the imatrix."""
    from phiquant.imatrix.collect import calibration_chunks, collect_importance
    from phiquant.runtime.loader import load_model

    with load_model(f16) as model:
        tokens, _ = calibration_chunks(model, calibration_text_path().read_text(), 512, chunks, None)
        plain, collecting = [], []
        for _ in range(2):  # alternated, best of two: the machine is shared
            with model.new_context(512, n_batch=512) as context:
                started = time.perf_counter()
                for chunk in tokens:
                    context.decode_windows(chunk[None, :], 0)
                plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            collect_importance(model, tokens, "benchmark")
            collecting.append(time.perf_counter() - started)
    n_tokens = int(tokens.size)
    return {
        "tokens": n_tokens,
        "plain_s": min(plain),
        "collecting_s": min(collecting),
        "ratio": min(collecting) / min(plain),
    }


def heldout_oracle_imatrix(f16: Path, output: Path) -> Path:
    """Diagnostic only: the imatrix of the held-out text itself (the best case for any calibration text),
    to tell a calibration-text problem from the quantizers' response to importance weighting."""
    from phiquant.imatrix.collect import calibration_chunks, collect_importance
    from phiquant.imatrix.files import write_imatrix
    from phiquant.runtime.loader import load_model

    with load_model(f16) as model:
        tokens, _ = calibration_chunks(model, heldout_text_path().read_text(), 512, 64, None)
        write_imatrix(output, collect_importance(model, tokens, "heldout-oracle").imatrix)
    return output


def kld_of(evaluation, path: Path) -> float:
    for file in evaluation.files:
        if Path(file.path).resolve() == path.resolve() and file.divergence is not None:
            return float(file.divergence.kld_mean)
    raise KeyError(path)


def run_model(model: Path, work: Path, windows: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    f16 = api.convert(model, work / "reference-F16.gguf", "f16").path
    started = time.perf_counter()
    imatrix = api.imatrix(f16, work / "imatrix.gguf")
    imatrix_seconds = time.perf_counter() - started
    overhead = collection_overhead(f16, min(imatrix.chunks, 16))
    rows, files = [], []
    for mode, matrix in (("none", None), ("ours", imatrix.path)):
        out = work / mode
        presets = api.quantize(f16, list(PRESETS), out / "presets", imatrix=matrix)
        for preset in presets.files:
            budget = api.quantize(
                f16, [], out / f"budget-{preset.type}", imatrix=matrix, max_size=preset.file_size
            )
            (budgeted,) = budget.files
            rows.append({"imatrix": mode, "preset": preset.type, "preset_path": preset.path,
                         "preset_size": preset.file_size, "budget_path": budgeted.path,
                         "budget_size": budgeted.file_size, "predicted_kld": budget.budget.predicted_kld,
                         "anchor": budget.budget.anchor})  # fmt: skip
            files += [preset.path, budgeted.path]
    lowest = api.quantize(f16, list(LOWEST), work / "lowest", imatrix=imatrix.path).files
    files += [f.path for f in lowest]
    oracle = heldout_oracle_imatrix(f16, work / "heldout-oracle-imatrix.gguf")
    oracle_files = api.quantize(f16, list(PRESETS[:3]), work / "oracle", imatrix=oracle).files
    files += [f.path for f in oracle_files]
    options = EvalOptions(ctx=512, max_windows=windows, speed_runs=0)
    evaluation = api.evaluate(files, reference=f16, text=heldout_text_path(), options=options)
    for row in rows:
        row["preset_kld"] = kld_of(evaluation, row.pop("preset_path"))
        row["budget_kld"] = kld_of(evaluation, row.pop("budget_path"))
    return {
        "model": model.name,
        "imatrix_chunks": imatrix.chunks,
        "imatrix_seconds": imatrix_seconds,
        "collection": overhead,
        "rows": rows,
        "lowest": [{"type": f.type, "size": f.file_size, "kld": kld_of(evaluation, f.path)} for f in lowest],
        "heldout_oracle": {f.type: kld_of(evaluation, f.path) for f in oracle_files},
        "scored_tokens": evaluation.n_scored_tokens,
    }


def print_model(result: dict) -> None:
    print(f"\n{result['model']}: held-out KLD vs F16 over {result['scored_tokens']} tokens; imatrix "
          f"{result['imatrix_chunks']} chunks in {result['imatrix_seconds']:.1f} s; collecting costs "
          f"{result['collection']['ratio']:.2f}x a plain decode of the same chunks")  # fmt: skip
    print(
        "| imatrix | preset | preset size | preset KLD | budget size | budget KLD | predicted | plan | budget wins |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        wins = row["budget_size"] <= row["preset_size"] and row["budget_kld"] < row["preset_kld"]
        print(f"| {row['imatrix']} | {row['preset']} | {row['preset_size']:,} | {row['preset_kld']:.5f} | "
              f"{row['budget_size']:,} | {row['budget_kld']:.5f} | {row['predicted_kld']:.5f} | {row['anchor']} | "
              f"{'yes' if wins else 'NO'} |")  # fmt: skip
    for item in result["lowest"]:
        print(f"| ours | {item['type']} | {item['size']:,} | {item['kld']:.5f} | - | - | - | - | - |")
    for type_name, kld in result["heldout_oracle"].items():
        print(f"| held-out text (diagnostic) | {type_name} | - | {kld:.5f} | - | - | - | - | - |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--windows", type=int, default=32, help="held-out windows of 512 tokens (default 32)")
    parser.add_argument("--keep", type=Path, help="keep the files in this directory")
    args = parser.parse_args()
    models = args.models or default_models()
    if not models:
        parser.error("no model: give Hugging Face directories (the bundled model is not installed)")
    with tempfile.TemporaryDirectory(prefix="phiquant-budget-bench-") as temporary:
        work = args.keep or Path(temporary)
        results = [run_model(model, work / model.name, args.windows) for model in models]
    for result in results:
        print_model(result)
    keys = ("imatrix", "preset", "preset_size", "preset_kld", "budget_size", "budget_kld", "anchor")
    summary = [
        {key: row[key] for key in keys} | {"model": result["model"]}
        for result in results
        for row in result["rows"]
    ]
    wins = sum(r["budget_size"] <= r["preset_size"] and r["budget_kld"] < r["preset_kld"] for r in summary)
    print(json.dumps({"benchmark": "budget_vs_presets", "wins": wins, "cases": len(summary), "rows": summary,
                      "collection_ratio": [r["collection"]["ratio"] for r in results],
                      "lowest": {r["model"]: r["lowest"] for r in results},
                      "heldout_oracle": {r["model"]: r["heldout_oracle"] for r in results}}))  # fmt: skip
    return 0 if np.isfinite([r["budget_kld"] for r in summary]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
