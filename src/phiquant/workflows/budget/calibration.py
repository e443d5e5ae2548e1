"""Fitting the budget planner's sensitivities (quant.budget) to KL divergences measured on the model.

Probe files put some tensors at Q3_K and everything else at Q8_0; an all-Q8_0 file is the base.  Two
kinds of probe:
- one per tensor role (attn_qkv, ffn_up, ..., output, token_embd): that role's tensors in every layer;
- one per band of layers (every layer for models of up to MAX_LAYER_BANDS layers, else that many
  contiguous bands): every quantizable tensor of those layers.
Each probe's KL divergence against the unquantized model, minus the base's, is what its tensors' error
increase cost.  The model s_t = s_role * f_layer is fitted to both kinds by alternating: role
sensitivities given the layer factors, then layer factors given the role sensitivities (each step
matches its own probes exactly; a few rounds settle both).  benchmarks/sensitivity_fit.py measures how
well this predicts probes of every (layer, role) pair, against role sensitivities alone.
The probes run over the calibration text, never the evaluation text, so the held-out figures that judge
the plan stay independent of the fit.  The measured profile (options and sensitivities) is cached per
model and importance matrix.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from phiquant import temporary_files
from phiquant.bundled import calibration_text_path
from phiquant.cache import cache_key, fingerprint
from phiquant.evaluate.evaluation import evaluate
from phiquant.evaluate.options import EvalOptions
from phiquant.progress import SILENT, Reporter
from phiquant.quant.budget import Sensitivities, TensorOptions, TypeOption
from phiquant.quant.plan import QuantOptions
from phiquant.quant.types import GGMLType
from phiquant.workflows.job import Source, plan_files, write_files

PROBE_TYPE = GGMLType.Q3_K
BASE_TYPE = GGMLType.Q8_0
# The probes are evaluated in one sweep (evaluate/sequential.py): window by window, every probe file decodes
# the same windows, so the reference's logits of each window are rebuilt once for all of them, and each
# file is loaded only while it decodes (memory_budget=0), so memory does not grow with their number.
# The sweep stops once every probe's mean KLD has a relative standard error of at most PROBE_REL_ERROR,
# after at least PROBE_MIN_WINDOWS windows, out of the PROBE_WINDOWS a full pass scores; the order of the
# probes is not needed (settle_order=False), only each one's mean.  The tolerance is the one that keeps the
# fitted plan the full pass's, measured on the bundled model (all 16 windows' KLDs of every probe, then
# plans fitted from the first n windows of 40 seeded visiting orders):
#   budget  n=4: equal plans / KLD excess    n=8                       n=12
#   6 MB    36/40, excess <= 0.01%           40/40                     40/40
#   8 MB    21/40, excess <= 0.92%           37/40, excess <= 0.08%    40/40
#   5 MB    4/40, excess <= 0.83%            9/40, excess <= 0.54%     8/40, excess <= 0.54%
# (excess: the plan's predicted KLD under the 16-window fit over the 16-window plan's, less 1; at 5 MB
# the plan turns on near ties that even 12 of the 16 windows decide differently, at no real cost).
# The largest relative standard error over the probes was 0.04-0.07 at 8 windows (0.04 at seed 0) and
# still only 0.08 at 4.  Hence the floor of two batches (8 windows) and 0.08: most orders stop at 8,
# noisier ones go on, up to all 16.
PROBE_WINDOWS = 16
PROBE_MIN_WINDOWS = 8
PROBE_REL_ERROR = 0.08
PROBE_OPTIONS = EvalOptions(
    ctx=512,
    max_windows=PROBE_WINDOWS,
    speed_runs=0,
    memory_budget=0,
    rel_error=PROBE_REL_ERROR,
    min_windows=PROBE_MIN_WINDOWS,
    settle_order=False,
)
# Every window (the floor is the whole population): a full pass's figures exactly, in the same one sweep.
FULL_PROBE_OPTIONS = replace(PROBE_OPTIONS, min_windows=PROBE_WINDOWS)
PROFILE_VERSION = 4  # profiles keep the worst measured KLD, and come from the sequential sweep
MIN_SENSITIVITY_SHARE = 0.01  # a probe that moved KLD by noise only gets 1% of the median
MAX_LAYER_BANDS = 8  # layer probes per model: each costs a Q8_0-sized file and its evaluation
FIT_ROUNDS = 50

K = TypeVar("K")


def error_increase(tensor: TensorOptions) -> float:
    errors = {o.type: o.error for o in tensor.options}
    return errors.get(PROBE_TYPE, 0.0) - errors.get(BASE_TYPE, 0.0)


def layer_bands(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """The layers grouped into at most MAX_LAYER_BANDS contiguous bands of (nearly) equal size."""
    ordered = sorted(set(layers))
    n_bands = min(MAX_LAYER_BANDS, len(ordered))
    return [
        tuple(ordered[i * len(ordered) // n_bands : (i + 1) * len(ordered) // n_bands])
        for i in range(n_bands)
    ]


def band_label(band: Sequence[int]) -> str:
    return f"blk.{band[0]}" if len(band) == 1 else f"blk.{band[0]}-{band[-1]}"


def _floored(raw: dict[K, float]) -> dict[K, float]:
    positive = [v for v in raw.values() if v > 0]
    floor = MIN_SENSITIVITY_SHARE * statistics.median(positive) if positive else 1.0
    return {key: max(value, floor) for key, value in raw.items()}


def sensitivities_from_kld(
    tensors: Sequence[TensorOptions],
    base_kld: float,
    role_kld: dict[str, float],
    band_kld: dict[tuple[int, ...], float] | None = None,
) -> Sensitivities:
    """Role sensitivities and layer factors fitted to the probes' KLD increases (module docstring)."""
    band_kld = band_kld or {}
    band_of_layer = {layer: band for band in band_kld for layer in band}
    increase = {t.name: error_increase(t) for t in tensors}
    factor = {layer: 1.0 for layer in band_of_layer}

    def layer_factor(tensor: TensorOptions) -> float:
        return 1.0 if tensor.layer is None else factor.get(tensor.layer, 1.0)

    roles: dict[str, float] = {}
    for _ in range(FIT_ROUNDS if band_kld else 1):
        raw_roles = {}
        for role, kld in role_kld.items():
            predicted = sum(layer_factor(t) * increase[t.name] for t in tensors if t.role == role)
            raw_roles[role] = max(kld - base_kld, 0.0) / predicted if predicted > 0 else 0.0
        roles = _floored(raw_roles)
        raw_bands = {}
        for band, kld in band_kld.items():
            predicted = sum(roles.get(t.role, 1.0) * increase[t.name] for t in tensors if t.layer in band)
            raw_bands[band] = max(kld - base_kld, 0.0) / predicted if predicted > 0 else 0.0
        bands = _floored(raw_bands)
        factor = {layer: bands[band] for layer, band in band_of_layer.items()}
    worst = max([base_kld, *role_kld.values(), *band_kld.values()])
    return Sensitivities(roles, dict(sorted(factor.items())), worst)


def calibration_probes(tensors: Sequence[TensorOptions]) -> dict[str, set[str]]:
    """Probe label -> the tensors it puts at the probe type: the base (none), each role, each layer band."""
    bands = layer_bands([t.layer for t in tensors if t.layer is not None])
    probes: dict[str, set[str]] = {"base": set()}
    probes |= {
        role: {t.name for t in tensors if t.role == role} for role in sorted({t.role for t in tensors})
    }
    probes |= {band_label(band): {t.name for t in tensors if t.layer in band} for band in bands}
    return probes


def fit_probes(
    tensors: Sequence[TensorOptions], measured: dict[str, float], *, layers: bool = True
) -> Sensitivities:
    """Sensitivities from the KLD of calibration_probes' files (labels as there, "base" included);
    `layers=False` fits the role sensitivities alone, ignoring the band probes."""
    roles = sorted({t.role for t in tensors})
    bands = layer_bands([t.layer for t in tensors if t.layer is not None]) if layers else []
    return sensitivities_from_kld(
        tensors,
        measured["base"],
        {role: measured[role] for role in roles},
        {band: measured[band_label(band)] for band in bands},
    )


def probe_overrides(tensors: Sequence[TensorOptions], members: set[str]) -> list[tuple[str, str]]:
    """--tensor-type pairs putting the named tensors at the probe type (where it is a candidate)."""
    return [
        (f"^{re.escape(t.name)}$", PROBE_TYPE.name)
        for t in tensors
        if t.name in members and any(o.type == PROBE_TYPE for o in t.options)
    ]


def probe_klds(
    source: Source,
    imatrix: str | Path | None,
    tensors: Sequence[TensorOptions],
    probes: dict[str, set[str]],
    reference: Path,
    *,
    threads: int | None = None,
    full: bool = False,
    reporter: Reporter = SILENT,
) -> dict[str, float]:
    """Probe label -> mean KLD over the calibration text of a file with the label's tensors at the probe
    type and the rest at the base type, to PROBE_OPTIONS' tolerance (`full`: over every window).  Every
    probe file is written in one pass over the source, to a temporary directory removed with them."""
    with temporary_files.temporary_directory("phiquant-calibration-") as temporary:
        options = [
            QuantOptions(
                tensor_types=tuple(probe_overrides(tensors, members)), has_imatrix=source.imatrix is not None
            )
            for members in probes.values()
        ]
        files = [Path(temporary) / f"probe-{index}.gguf" for index in range(len(probes))]
        planned = plan_files(source, [BASE_TYPE.name] * len(probes), files, options, imatrix)
        reporter.note(f"writing {len(planned)} calibration files (base and probes) in one pass")
        write_files(source, planned, threads=threads, reporter=reporter)
        paths = {label: p.path.resolve() for label, p in zip(probes, planned)}
        reporter.note(
            f"calibrating sensitivities: {len(probes)} files (base and probes) against {reference.name}"
        )
        evaluation = evaluate(
            list(paths.values()),
            reference=reference,
            text=calibration_text_path(),
            options=FULL_PROBE_OPTIONS if full else PROBE_OPTIONS,
            reporter=reporter,
        )
    klds = {Path(f.path).resolve(): f.divergence.kld_mean for f in evaluation.files if f.divergence}
    return {label: klds.get(path, 0.0) for label, path in paths.items()}


def measure_sensitivities(
    source: Source,
    imatrix: str | Path | None,
    tensors: Sequence[TensorOptions],
    reference: Path,
    *,
    threads: int | None = None,
    full: bool = False,
    reporter: Reporter = SILENT,
) -> tuple[Sensitivities, float, dict[str, float]]:
    """(sensitivities, base KLD, each other probe's KLD by label) from the calibration probes."""
    probes = calibration_probes(tensors)
    measured = probe_klds(
        source, imatrix, tensors, probes, reference, threads=threads, full=full, reporter=reporter
    )
    fitted = fit_probes(tensors, measured)
    base = measured.pop("base")
    return fitted, base, measured


def profile_key(source_fingerprint: str, imatrix: str | Path | None) -> str:
    return cache_key(PROFILE_VERSION, source_fingerprint, fingerprint(imatrix) if imatrix else "none")


def save_profile(path: Path, tensors: Sequence[TensorOptions], sensitivities: Sensitivities) -> None:
    data = {
        "tensors": [
            {
                "name": t.name,
                "role": t.role,
                "layer": t.layer,
                "options": [[o.type.name, o.n_bytes, o.error] for o in t.options],
            }
            for t in tensors
        ],
        "roles": dict(sensitivities.roles),
        "layers": {str(layer): factor for layer, factor in sensitivities.layers.items()},
        "worst_measured_kld": sensitivities.worst_measured_kld,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_files.write_text(path, json.dumps(data))


def load_profile(path: Path) -> tuple[list[TensorOptions], Sensitivities] | None:
    """The cached profile, or None when there is none or it cannot be read (it is then measured again)."""
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
                None if item["layer"] is None else int(item["layer"]),
            )
            for item in data["tensors"]
        ]
        roles = {str(k): float(v) for k, v in data["roles"].items()}
        layers = {int(k): float(v) for k, v in data["layers"].items()}
        worst = data["worst_measured_kld"]
        return tensors, Sensitivities(roles, layers, None if worst is None else float(worst))
    except (OSError, ValueError, KeyError, TypeError):
        return None
