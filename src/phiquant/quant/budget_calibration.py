"""Fitting the budget planner's sensitivities (quant.budget) to KL divergences measured on the model.

One probe file per tensor role: that role's tensors at Q3_K, everything else at Q8_0, plus an all-Q8_0
base.  Each probe's KL divergence against the unquantized model, minus the base's, divided by the
increase of the role's summed relative error, is the role's sensitivity: predicted KLD per unit of
error.  The probes run over the calibration text, never the evaluation text, so the held-out figures
that judge the plan stay independent of the fit.  The measured profile (options and sensitivities) is
cached per model and importance matrix.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from phiquant.evaluate.options import EvalOptions
from phiquant.progress import SILENT, Reporter
from phiquant.quant.budget import TensorOptions, TypeOption
from phiquant.quant.types import GGMLType

PROBE_TYPE = GGMLType.Q3_K
BASE_TYPE = GGMLType.Q8_0
PROBE_OPTIONS = EvalOptions(ctx=512, max_windows=16, speed_runs=0)
PROFILE_VERSION = 1
MIN_SENSITIVITY_SHARE = 0.01  # a role whose probe moved KLD by noise only gets 1% of the median


def role_error_increase(tensors: Sequence[TensorOptions], role: str) -> float:
    total = 0.0
    for tensor in tensors:
        if tensor.role == role:
            errors = {o.type: o.error for o in tensor.options}
            total += errors.get(PROBE_TYPE, 0.0) - errors.get(BASE_TYPE, 0.0)
    return total


def sensitivities_from_kld(
    tensors: Sequence[TensorOptions], base_kld: float, probe_kld: dict[str, float]
) -> dict[str, float]:
    """Per role: (KLD with the role at the probe type - base KLD) / the role's error increase."""
    raw = {}
    for role, kld in probe_kld.items():
        increase = role_error_increase(tensors, role)
        raw[role] = max(kld - base_kld, 0.0) / increase if increase > 0 else 0.0
    positive = sorted(v for v in raw.values() if v > 0)
    floor = MIN_SENSITIVITY_SHARE * positive[len(positive) // 2] if positive else 1.0
    return {role: max(value, floor) for role, value in raw.items()}


def measure_sensitivities(
    source: str | Path,
    imatrix: str | Path | None,
    tensors: Sequence[TensorOptions],
    reference: Path,
    *,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> tuple[dict[str, float], float, dict[str, float]]:
    """(sensitivities, base KLD, per-role probe KLD) from probe files written to a temporary directory."""
    from phiquant import api
    from phiquant.bundled import calibration_text_path

    roles = sorted({t.role for t in tensors})
    with tempfile.TemporaryDirectory(prefix="phiquant-calibration-") as temporary:
        paths = []
        for label in ["base", *roles]:
            overrides = [
                (f"^{re.escape(t.name)}$", PROBE_TYPE.name)
                for t in tensors
                if t.role == label and any(o.type == PROBE_TYPE for o in t.options)
            ]
            result = api.quantize(
                source,
                BASE_TYPE.name,
                Path(temporary) / label,
                imatrix=imatrix,
                tensor_types=overrides,
                threads=threads,
            )
            paths.append(result.files[0].path)
        reporter.note(f"calibrating sensitivities: {len(roles)} probe files against {reference.name}")
        evaluation = api.evaluate(
            paths, reference=reference, text=calibration_text_path(), options=PROBE_OPTIONS, reporter=reporter
        )
    klds = {Path(f.path).resolve(): f.divergence.kld_mean for f in evaluation.files if f.divergence}
    by_label = {label: klds.get(path.resolve(), 0.0) for label, path in zip(["base", *roles], paths)}
    base = by_label.pop("base")
    return sensitivities_from_kld(tensors, base, by_label), base, by_label


def profile_key(source_fingerprint: str, imatrix: str | Path | None) -> str:
    digest = hashlib.sha256(Path(imatrix).read_bytes()).hexdigest()[:16] if imatrix else "none"
    return f"v{PROFILE_VERSION}-{source_fingerprint}-{digest}"


def save_profile(path: Path, tensors: Sequence[TensorOptions], sensitivities: dict[str, float]) -> None:
    data = {
        "tensors": [
            {
                "name": t.name,
                "role": t.role,
                "options": [[o.type.name, o.n_bytes, o.error] for o in t.options],
            }
            for t in tensors
        ],
        "sensitivities": sensitivities,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def load_profile(path: Path) -> tuple[list[TensorOptions], dict[str, float]] | None:
    try:
        data = json.loads(path.read_text())
        tensors = [
            TensorOptions(
                item["name"],
                item["role"],
                tuple(
                    TypeOption(GGMLType[name], int(size), float(error))
                    for name, size, error in item["options"]
                ),
            )
            for item in data["tensors"]
        ]
        return tensors, {str(k): float(v) for k, v in data["sensitivities"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
