"""Benchmark: wall time and peak memory of `phiquant quantize M --max-size S --dry-run` by model size.

The budget workflow measures a model with calibration probes (quantized files evaluated against the
unquantized one).  This runs the command, from a fresh cache, on the bundled model and on random-weight
Phi-3.5-layout checkpoints (tests/fixtures' factory, 32064-token vocabulary), and reports wall time and
the peak resident memory of the command's whole process tree (sampled from /proc every 0.1 s).  Give
--code ROOT more than once to compare checkouts in one run (e.g. a `git archive` of an older commit):
each model is run with each checkout in turn, so the machine's load falls on both alike.

    python benchmarks/budget_scale.py --models bundled mid --code /tmp/before --code .

--before REV does the archiving itself (`git archive REV` into a temporary directory, run first, then
this checkout), and adds per model the wall-time ratio (this / REV), both peak RSS figures and whether
the two plans are equal:

    python benchmarks/budget_scale.py --models bundled --before 18c241d

Prints one line per run (and per comparison), then one JSON line (the last line of stdout) with every
run and the plan each made (tensor -> type), so the plans of two checkouts can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# name -> (spec field overrides of PHI35_MINI, --max-size); None: the bundled model.
MODELS: dict[str, tuple[dict[str, int], str] | None] = {
    "bundled": None,
    # ~45M parameters: hidden 512, 4 layers
    "mid": (dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=8), "30MB"),
    # ~270M parameters: the model (hidden 1024, 16 layers)
    "large": (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16), "150MB"),
}  # fmt: skip
BUNDLED_MAX_SIZE = "6MB"
MODEL_CACHE = Path.home() / ".cache" / "phiquant-bench" / "budget-models"


def model_dir(name: str) -> tuple[Path, str]:
    spec = MODELS[name]
    if spec is None:
        from phiquant.bundled import bundled_model_dir

        return bundled_model_dir(), BUNDLED_MAX_SIZE
    overrides, max_size = spec
    directory = MODEL_CACHE / name
    if not (directory / "config.json").is_file():
        from tests.fixtures.phi3_specs import PHI35_MINI
        from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

        build_phi3_checkpoint(directory, PHI35_MINI, **overrides)
    return directory, max_size


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pending += [int(child) for child in children]
    return total


def run(code: Path, model: Path, max_size: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="phiquant-bench-cache-") as cache:
        env = dict(os.environ, PHIQUANT_CACHE=cache, PYTHONPATH=f"{code / 'src'}:{code}")
        command = [sys.executable, "-m", "phiquant", "quantize", str(model), "--max-size", max_size]
        command += ["--dry-run", "--json", "-o", cache]
        began = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.1)
        out, err = process.communicate()
        seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"{code}: exit {process.returncode}\n{err[-3000:]}")
    result = json.loads(out)
    (plan,) = result["plans"].values()
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak / 2**20),
        "budget": result.get("budget"),
        "plan": {row["name"]: row["target_type"] for row in plan},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["bundled", "mid"], choices=sorted(MODELS))
    parser.add_argument("--code", action="append", type=Path, help="checkout root (default: this one)")
    parser.add_argument("--before", metavar="REV", help="compare a git archive of REV with this checkout")
    args = parser.parse_args()
    codes = [c.resolve() for c in args.code] if args.code else [ROOT]
    with tempfile.TemporaryDirectory(prefix="phiquant-bench-before-") as before:
        if args.before:
            archive(args.before, Path(before))
            codes = [Path(before), ROOT]
        runs = measure(args.models, codes)
    if args.before:
        compared = [compare(name, runs) for name in args.models]
        runs += compared
    print(json.dumps(runs))


def archive(rev: str, directory: Path) -> None:
    """The tree of commit `rev` of this repository, unpacked into `directory`."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=tar, check=True)


def compare(name: str, runs: list[dict[str, object]]) -> dict[str, object]:
    """The second checkout's run of `name` against the first's: wall ratio, peak RSS, equal plans."""
    before, after = [r for r in runs if r["model"] == name]
    ratio = float(after["seconds"]) / float(before["seconds"])  # type: ignore[arg-type]
    equal = before["plan"] == after["plan"]
    print(
        f"{name:8} wall {after['seconds']} s / {before['seconds']} s = {ratio:.2f}; peak RSS "
        f"{after['peak_rss_mb']} MB (before {before['peak_rss_mb']} MB); plans equal: {equal}",
        flush=True,
    )
    return {"model": name, "wall_ratio": round(ratio, 3), "plans_equal": equal}


def measure(models: list[str], codes: list[Path]) -> list[dict[str, object]]:
    runs = []
    for name in models:
        model, max_size = model_dir(name)
        for code in codes:
            measured = run(code, model, max_size)
            print(
                f"{name:8} {str(code):40} {measured['seconds']:8.1f} s  {measured['peak_rss_mb']:6} MB",
                flush=True,
            )
            runs.append({"model": name, "code": str(code), **measured})
    return runs


if __name__ == "__main__":
    main()
