"""Benchmark: how many calibration windows the budget planner's probes need for the plan to stay the same.

The budget's probes (workflows.budget.calibration) are evaluated sequentially and stop early.  This
measures every probe's KL divergence on each of the PROBE_WINDOWS windows a full pass scores (one sweep,
the window means recorded), then for n windows fits the sensitivities to the first n windows of each of
--orders seeded visiting orders (evaluate.sequential.window_order), plans each budget, and reports how
often the plan equals the plan fitted to every window, how much worse the differing plans are (their
predicted KLD under the every-window fit, over that plan's, less 1) and the largest relative standard
error of the probes' mean KLD after n windows (what the stopping rule looks at).  calibration.py's
PROBE_MIN_WINDOWS and PROBE_REL_ERROR are chosen from this table.

    python benchmarks/probe_tolerance.py --sizes 5MB 6MB 8MB

Prints a line per (budget, n), then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from phiquant.bundled import bundled_model_dir  # noqa: E402
from phiquant.evaluate import evaluation  # noqa: E402
from phiquant.evaluate.options import EvalOptions  # noqa: E402
from phiquant.evaluate.sequential import SequentialEstimator, window_order  # noqa: E402
from phiquant.quant.budget import TensorOptions, parse_size, predicted_loss_of  # noqa: E402
from phiquant.quant.budget_plan import BudgetRequest  # noqa: E402
from phiquant.quant.types import GGMLType  # noqa: E402
from phiquant.workflows.budget import calibration, job  # noqa: E402
from phiquant.workflows.job import Source, open_source  # noqa: E402


def window_klds(source: Source, model: Path) -> tuple[list[TensorOptions], list[str], np.ndarray]:
    """(tensors, probe labels, (windows in text order, probes) mean KLD of each probe on each window)."""
    recorded: list[SequentialEstimator] = []

    class Recording(SequentialEstimator):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            recorded.append(self)

    evaluation.SequentialEstimator = Recording  # type: ignore[misc]
    # Every window, in the sweep's own visiting order (seed 0), recorded as it goes.
    calibration.PROBE_OPTIONS = calibration.FULL_PROBE_OPTIONS
    tensors, _ = job.model_profile(source, model, None)
    labels = list(calibration.calibration_probes(tensors))
    visited = np.stack(recorded[0]._kld)
    in_text_order = np.empty_like(visited)
    in_text_order[window_order(len(visited), EvalOptions().seed)] = visited
    return tensors, labels, in_text_order


def plan_from(
    source: Source, model: Path, tensors: list[TensorOptions], measured: dict[str, float], size: str
) -> tuple[dict[str, GGMLType], Any]:
    fitted = calibration.fit_probes(tensors, measured)
    job.model_profile = lambda *args, **kwargs: (tensors, fitted)  # the plan for these sensitivities
    plan, _ = job.budget_for(source, model, None, BudgetRequest(max_bytes=parse_size(size)))
    return plan.allocation.types, fitted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["5MB", "6MB", "8MB"])
    parser.add_argument("--windows", nargs="+", type=int, default=[4, 8, 12])
    parser.add_argument("--orders", type=int, default=40)
    args = parser.parse_args()
    os.environ["PHIQUANT_CACHE"] = tempfile.mkdtemp(prefix="phiquant-bench-cache-")
    model = bundled_model_dir()
    source = open_source(model)
    tensors, labels, klds = window_klds(source, model)
    total = len(klds)
    rows = []
    for size in args.sizes:
        every, every_fit = plan_from(source, model, tensors, dict(zip(labels, klds.mean(axis=0))), size)
        every_loss = predicted_loss_of(tensors, every, every_fit)
        for n in args.windows:
            equal, excess, errors = 0, [], []
            for seed in range(args.orders):
                used = klds[window_order(total, seed)[:n]]
                plan, _ = plan_from(source, model, tensors, dict(zip(labels, used.mean(axis=0))), size)
                equal += plan == every
                excess.append(predicted_loss_of(tensors, plan, every_fit) / every_loss - 1)
                spread = used.std(axis=0, ddof=1) / math.sqrt(n) * math.sqrt(1 - n / total)
                errors.append(float(np.max(spread / used.mean(axis=0))))
            row = {
                "size": size,
                "windows": n,
                "plans_equal": equal,
                "orders": args.orders,
                "largest_excess": max(excess),
                "median_largest_rel_error": float(np.median(errors)),
            }
            print(
                f"{size:6} n={n:2}  plan equal in {equal}/{args.orders}  largest excess {max(excess):.2%}"
                f"  median largest relative error {row['median_largest_rel_error']:.3f}",
                flush=True,
            )
            rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
