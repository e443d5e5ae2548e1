"""A budgeted quantization run: the measured profile of the opened model (cached), then the plan.

The planning itself (quant.budget, quant.budget_plan, quant.budget_anchor) stays free of file and
llama.cpp I/O; this module measures what it needs.
"""

from __future__ import annotations

import re
from pathlib import Path

from phiquant.cache import BUDGET, fingerprint, sub_cache
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.progress import SILENT, Reporter
from phiquant.quant.budget import Sensitivities, TensorOptions
from phiquant.quant.budget_plan import BudgetPlan, BudgetRequest, plan_budget
from phiquant.quant.plan import Decision, QuantOptions
from phiquant.quant.tensor_error import measure_tensors
from phiquant.quant.types import GGMLType
from phiquant.workflows.as_gguf import as_gguf
from phiquant.workflows.budget.calibration import (
    load_profile,
    measure_sensitivities,
    profile_key,
    save_profile,
)
from phiquant.workflows.job import Source, plan_files

MEASURE_BASE = "Q8_0"  # any quantized preset: every quantizable tensor is overridden by the plan
# The presets a budget may be anchored to (quant.budget_anchor): the k-quant mixes, whose rules need no
# importance matrix; a preset whose plan cannot be made of this model is skipped.
ANCHOR_PRESETS = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
)  # fmt: skip


def model_profile(
    source: Source,
    source_path: Path,
    imatrix_path: Path | None,
    *,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> tuple[list[TensorOptions], Sensitivities]:
    """Every quantizable tensor's options and the fitted sensitivities (per role and layer), from the cache if there."""
    cache = sub_cache(BUDGET) / f"{profile_key(fingerprint(source_path), imatrix_path)}.json"
    cached = load_profile(cache)
    if cached is not None:
        reporter.note(f"budget profile from the cache: {cache}")
        return cached
    (planned,) = plan_files(source, [MEASURE_BASE], [Path("unused.gguf")], _options(source, ()))
    quantizable = {t.name for t in planned.plan.tensors if t.decision != Decision.NOT_QUANTIZABLE}
    tensors = [t for t in source.model.tensors if t.name in quantizable]
    reporter.start("measuring quantization errors", total=sum(t.n_elements for t in tensors), unit="weights")
    options = measure_tensors(tensors, source.importance, threads=threads, progress=reporter.advance)
    reporter.finish()
    with as_gguf(source_path, reporter=reporter) as reference:
        sensitivities, base, probes = measure_sensitivities(
            source, imatrix_path, options, reference.gguf, threads=threads, reporter=reporter
        )
    reporter.note(
        f"calibration KLD: base {base:.5f}, " + ", ".join(f"{k} {v:.5f}" for k, v in probes.items())
    )
    save_profile(cache, options, sensitivities)
    return options, sensitivities


def _options(source: Source, overrides: tuple[tuple[str, str], ...]) -> QuantOptions:
    return QuantOptions(tensor_types=overrides, has_imatrix=source.imatrix is not None)


def preset_assignments(source: Source, names: set[str]) -> dict[str, dict[str, GGMLType]]:
    """Each anchor preset's type for every budgeted tensor, as the ordinary planner chooses it."""
    assignments = {}
    for preset in ANCHOR_PRESETS:
        try:
            (planned,) = plan_files(source, [preset], [Path("unused.gguf")], _options(source, ()))
        except PhiquantError:
            continue  # e.g. rows that no type of the mix divides
        assignments[preset] = {t.name: t.target_type for t in planned.plan.tensors if t.name in names}
    return assignments


def budget_for(
    source: Source,
    source_path: Path,
    imatrix_path: Path | None,
    request: BudgetRequest,
    *,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> tuple[BudgetPlan, str]:
    """The plan for `request`, and the preset the file is labelled with (BudgetPlan.label)."""
    tensors, sensitivities = model_profile(
        source, source_path, imatrix_path, threads=threads, reporter=reporter
    )
    names = {t.name for t in tensors}

    def size_of(types: dict[str, str], metadata: list[Metadatum]) -> int:
        overrides = tuple((f"^{re.escape(name)}$", t) for name, t in sorted(types.items()))
        (planned,) = plan_files(
            source, [MEASURE_BASE], [Path("unused.gguf")], _options(source, overrides), imatrix_path, metadata
        )
        return planned.predicted_size

    (base,) = plan_files(source, [MEASURE_BASE], [Path("unused.gguf")], _options(source, ()))
    fixed = sum(t.target_bytes for t in base.plan.tensors if t.name not in names)
    presets = preset_assignments(source, names)
    plan = plan_budget(request, tensors, sensitivities, size_of, base.plan.n_elements, fixed, presets)
    return plan, plan.label
