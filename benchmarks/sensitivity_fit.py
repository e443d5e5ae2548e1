"""Benchmark: how well the budget planner's sensitivity model predicts what quantizing one tensor costs.

quant.budget predicts a tensor's KL divergence cost as sensitivity x relative weighted error.  This
measures, on a model, the KLD cost of every (layer, role) pair on its own (that pair's tensor at Q3_K,
everything else at Q8_0, over the calibration text, as the calibration probes do) and compares it with
the two predictors fitted from the ordinary calibration probes (workflows.budget.calibration):
- role sensitivities alone (one probe per role);
- role sensitivities times layer factors (plus one probe per layer band), what the planner uses.
Reported: the root mean square and the largest |log(predicted / measured)| over the pairs.

    python benchmarks/sensitivity_fit.py [MODEL_DIR]

Prints a line per pair and a summary, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from phiquant import api  # noqa: E402
from phiquant.bundled import DEFAULT_MODEL_DIR  # noqa: E402
from phiquant.quant.budget import Sensitivities, TensorOptions  # noqa: E402
from phiquant.quant.tensor_error import measure_tensors  # noqa: E402
from phiquant.workflows.budget.calibration import (  # noqa: E402
    calibration_probes,
    error_increase,
    fit_probes,
    probe_klds,
)
from phiquant.workflows.job import open_source  # noqa: E402


def log_errors(
    tensors: list[TensorOptions], fitted: Sensitivities, measured: dict[str, float]
) -> list[float]:
    by_name = {t.name: t for t in tensors}
    return [math.log(fitted.of(by_name[name]) * error_increase(by_name[name]) / cost)
            for name, cost in measured.items() if cost > 0]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    source = open_source(args.model)
    names = {t.name for t in source.model.tensors if len(t.shape) > 1}
    tensors = measure_tensors([t for t in source.model.tensors if t.name in names], {})
    probes = calibration_probes(tensors)
    probes |= {f"pair:{t.name}": {t.name} for t in tensors if t.layer is not None}
    with tempfile.TemporaryDirectory(prefix="phiquant-sensitivity-") as temporary:
        reference = api.convert(args.model, Path(temporary) / "reference.gguf", "auto").path
        measured = probe_klds(source, None, tensors, probes, reference)
    pairs = {
        label[5:]: kld - measured["base"] for label, kld in measured.items() if label.startswith("pair:")
    }
    predictors = {
        "role": fit_probes(tensors, measured, layers=False),
        "role x layer": fit_probes(tensors, measured),
    }
    summary = {}
    for label, fitted in predictors.items():
        errors = log_errors(tensors, fitted, pairs)
        rms = math.sqrt(sum(e * e for e in errors) / len(errors))
        summary[label] = {
            "rms_log_ratio": rms,
            "max_log_ratio": max(abs(e) for e in errors),
            "pairs": len(errors),
        }
        print(f"{label}: predicted/measured pair cost off by a factor of {math.exp(rms):.2f} (rms of the log "
              f"ratio {rms:.3f}, largest {summary[label]['max_log_ratio']:.3f}) over {len(errors)} pairs")  # fmt: skip
    factors = predictors["role x layer"].layers
    print("layer factors: " + " ".join(f"{v:.2f}" for v in factors.values()))
    print(json.dumps({"benchmark": "sensitivity_fit", "model": args.model.name, "predictors": summary,
                      "layer_factors": factors, "pair_kld": pairs}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
