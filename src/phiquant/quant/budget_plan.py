"""`quantize --max-size / --target-bpw`: a per-tensor type plan for a size budget, and what the file records.

The steps: measure every quantizable tensor's error for each candidate type (quant.tensor_error),
calibrate one sensitivity per tensor role and one factor per layer against KL divergences measured on the
model over the calibration text (workflows.budget.calibration), allocate under the budget
(quant.budget.allocate), and hand the choice to the ordinary planner as exact per-tensor overrides, so the file is written by the same path
as every preset.  The measured profile is cached per model and importance matrix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gguf import GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.quant.budget import Allocation, Sensitivities, TensorOptions, minimum_bytes
from phiquant.quant.budget_anchor import FREE_MARGIN, TRUST_MARGIN, choose_allocation
from phiquant.quant.plan import TensorPlan
from phiquant.quant.types import GGMLType, type_info

METHOD = (
    "greedy on the convex hull of each tensor's (bytes, predicted KLD); predicted KLD = role sensitivity x "
    "layer factor x importance-weighted relative ggml quantization error; both fitted to measured KLD; "
    "anchored to a preset of about the same size unless clearly predicted better (quant.budget_anchor)"
)
KEY_PREFIX = "phiquant.budget."
MAX_FIT_ROUNDS = 8
# A predicted KLD this many times the worst any calibration file measured is an extrapolation the fit has
# no evidence for.  A real plan can exceed every probe (a probe lowers one role or one band of layers to
# Q3_K; a plan may lower all of them, further), by some ten times at the smallest budgets; a fit spoiled by
# noise (a probe whose KLD change is noise divided by a tiny error change) overshoots by orders of magnitude.
IMPLAUSIBLE_FACTOR = 100.0
# general.file_type of a budgeted file.  llama.cpp has no value for a mix: llama-quantize writes the ftype it
# was asked for, and its loader, finding no general.file_type, names a file after its most common tensor
# type, mapped as below (src/llama-model-loader.cpp: Q3_K -> MOSTLY_Q3_K_M, Q4_K -> MOSTLY_Q4_K_M, ...).  A
# budget asks for no ftype, so its file is labelled by that loader rule, counted in weights rather than
# tensors: counting tensors lets the F32 norms outvote the matrices, and counting bytes named a file Q8_0
# for its 8-bit token embedding while most of its weights were Q2_K.  The exact mix is recorded in
# phiquant.budget.tensor_types; the key keeps a value every llama.cpp build can read.
PRESET_OF_TYPE = {
    GGMLType.IQ1_S: "IQ1_S", GGMLType.IQ2_XXS: "IQ2_XXS", GGMLType.IQ2_XS: "IQ2_XS", GGMLType.Q2_K: "Q2_K",
    GGMLType.IQ3_XXS: "IQ3_XXS", GGMLType.IQ3_S: "IQ3_S", GGMLType.Q3_K: "Q3_K_M", GGMLType.IQ4_XS: "IQ4_XS",
    GGMLType.Q4_K: "Q4_K_M", GGMLType.Q5_K: "Q5_K_M", GGMLType.Q6_K: "Q6_K", GGMLType.Q8_0: "Q8_0",
}  # fmt: skip


@dataclass(frozen=True)
class BudgetRequest:
    max_bytes: int | None = None  # file size limit
    target_bpw: float | None = None  # bits per weight over all tensors, as llama.cpp reports it

    def describe(self) -> str:
        return (
            f"max size {self.max_bytes} bytes"
            if self.max_bytes is not None
            else f"{self.target_bpw} bits per weight"
        )


@dataclass(frozen=True)
class BudgetPlan:
    request: BudgetRequest
    allocation: Allocation
    sensitivities: Sensitivities
    predicted_size: int  # the file's bytes
    minimum_size: int  # the smallest file the candidates allow
    anchor: str = "free"  # the preset the plan started from, or "free" (quant.budget_anchor)
    mix: Mapping[str, float] = dataclasses.field(default_factory=dict)  # type -> share of the weights
    fit_warning: str | None = None  # why the predicted KLD is not to be trusted (fit_warning)

    @property
    def label(self) -> str:
        """The preset written to general.file_type: the type holding most weights (PRESET_OF_TYPE)."""
        return PRESET_OF_TYPE[GGMLType[list(self.mix)[0]]]

    def overrides(self) -> tuple[tuple[str, str], ...]:
        """(regex, type) pairs naming each tensor exactly, for QuantOptions.tensor_types."""
        return tuple((f"^{re.escape(name)}$", t.name) for name, t in sorted(self.allocation.types.items()))

    def anchor_reason(self) -> str:
        if self.anchor == "free":
            return f"free: predicted better than the nearest preset's anchored plan by more than {FREE_MARGIN:.0%}"
        return (
            f"{self.anchor}: the preset's plan, moved only where predicted better by more than {TRUST_MARGIN:.0%} "
            "of the loss touched; the free allocation was not clearly better"
        )

    def metadata(self) -> list[Metadatum]:
        string, array = GGUFValueType.STRING, GGUFValueType.ARRAY
        limit = (
            self.request.max_bytes
            if self.request.max_bytes is not None
            else f"{self.request.target_bpw} bits per weight"
        )
        return [
            Metadatum(KEY_PREFIX + "request", str(limit), string),
            Metadatum(KEY_PREFIX + "method", METHOD, string),
            Metadatum(KEY_PREFIX + "anchor", self.anchor_reason(), string),
            Metadatum(
                KEY_PREFIX + "predicted_kld", float(self.allocation.predicted_loss), GGUFValueType.FLOAT32
            ),
            Metadatum(
                KEY_PREFIX + "sensitivities",
                [f"{role}={value:.6g}" for role, value in sorted(self.sensitivities.roles.items())],
                array,
                string,
            ),
            Metadatum(
                KEY_PREFIX + "layer_factors",
                [f"{value:.4g}" for _, value in sorted(self.sensitivities.layers.items())],
                array,
                string,
            ),
            Metadatum(
                KEY_PREFIX + "tensor_types",
                [f"{name}={t.name}" for name, t in sorted(self.allocation.types.items())],
                array,
                string,
            ),
        ] + ([Metadatum(KEY_PREFIX + "fit_warning", self.fit_warning, string)] if self.fit_warning else [])


# file size of a per-tensor assignment, metadata included (the caller plans it through the real planner)
SizeOf = Callable[[dict[str, str], list[Metadatum]], int]


def plan_budget(
    request: BudgetRequest,
    tensors: list[TensorOptions],
    sensitivities: Sensitivities,
    size_of: SizeOf,
    n_elements: int,
    fixed_tensor_bytes: int,
    presets: Mapping[str, Mapping[str, GGMLType]] | None = None,
) -> BudgetPlan:
    """Allocate, then shrink the allocation's share until the planned file (or its tensors, for a bpw
    target) fits; refuse a budget under the smallest possible file, naming that minimum.  `presets`: preset
    name -> its per-tensor types, the anchors quant.budget_anchor may start from."""
    cheapest = {t.name: min(t.options, key=lambda o: o.n_bytes).type.name for t in tensors}
    floor_allocation = Allocation(
        {t.name: min(t.options, key=lambda o: o.n_bytes).type for t in tensors}, minimum_bytes(tensors), 0.0
    )
    floor_plan = BudgetPlan(request, floor_allocation, sensitivities, 0, 0)
    minimum_file = size_of(cheapest, floor_plan.metadata())
    overhead = minimum_file - minimum_bytes(tensors)  # header, metadata, unquantized tensors, padding
    if request.max_bytes is not None:
        if request.max_bytes < minimum_file:
            raise PhiquantError(
                f"--max-size {request.max_bytes} bytes is below the smallest file these types can make of "
                f"this model: {minimum_file} bytes ({minimum_file / 2**20:.2f} MiB, every tensor at its "
                "cheapest candidate type)"
            )
        limit, measured = request.max_bytes, overhead
    else:
        assert request.target_bpw is not None
        limit = int(request.target_bpw * n_elements / 8)
        measured = fixed_tensor_bytes
        smallest_bpw = 8 * (minimum_bytes(tensors) + fixed_tensor_bytes) / n_elements
        if limit < minimum_bytes(tensors) + fixed_tensor_bytes:
            raise PhiquantError(
                f"--target-bpw {request.target_bpw} is below the smallest these types allow for this model: "
                f"{smallest_bpw:.3f} bits per weight"
            )
    refuse_unusable_fit(sensitivities)
    share = limit - measured
    for _ in range(MAX_FIT_ROUNDS):
        allocation, anchor = choose_allocation(
            tensors, max(share, minimum_bytes(tensors)), sensitivities, presets or {}
        )
        refuse_unusable_fit(sensitivities, allocation.predicted_loss)
        mix, warning = (
            type_shares(tensors, allocation.types),
            fit_warning(allocation.predicted_loss, sensitivities),
        )
        draft = BudgetPlan(request, allocation, sensitivities, 0, minimum_file, anchor, mix, warning)
        types = {name: t.name for name, t in allocation.types.items()}
        size = size_of(types, draft.metadata())
        used = size if request.max_bytes is not None else allocation.tensor_bytes + fixed_tensor_bytes
        if used <= limit:
            return dataclasses.replace(draft, predicted_size=size)
        share -= used - limit  # padding and longer type names in the metadata: take it off and retry
    raise PhiquantError(f"could not fit the plan into {request.describe()}")


def refuse_unusable_fit(sensitivities: Sensitivities, predicted_kld: float = 0.0) -> None:
    """A fit with a non-finite or negative sensitivity or prediction orders the upgrades arbitrarily (NaN
    compares false with everything), so its plan is no plan: refused, where a preset still works."""
    values = {f"sensitivity of {k}": v for k, v in sensitivities.roles.items()}
    values |= {f"factor of layer {k}": v for k, v in sensitivities.layers.items()}
    values["predicted mean KLD"] = predicted_kld
    bad = [f"{name} {value}" for name, value in values.items() if not math.isfinite(value) or value < 0]
    if bad:
        raise PhiquantError(
            f"the budget plan cannot be trusted: the sensitivity fit gave {', '.join(bad[:3])} (a calibration "
            "file's KL divergence was not a finite number, or the cached profile is damaged); quantize to a "
            "preset with -t instead"
        )


def fit_warning(predicted_kld: float, sensitivities: Sensitivities) -> str | None:
    """Why a finite prediction is implausible, or None: far beyond anything the calibration measured."""
    worst = sensitivities.worst_measured_kld
    if worst is None or not math.isfinite(worst) or predicted_kld <= IMPLAUSIBLE_FACTOR * max(worst, 0.0):
        return None
    return (
        f"the predicted mean KLD ({predicted_kld:.5g} nats) is over {IMPLAUSIBLE_FACTOR:.0f} times the worst "
        f"any calibration file measured ({worst:.5g} nats): the sensitivity fit is extrapolating beyond its "
        "evidence, so the figure and the choice of types rest on noise; measure the file (--eval) before "
        "trusting it"
    )


def type_shares(tensors: Sequence[TensorOptions], types: Mapping[str, GGMLType]) -> dict[str, float]:
    """Each chosen type's share of the budgeted tensors' weights, largest first (ties: the smaller type)."""
    weights: dict[GGMLType, int] = {}
    for tensor in tensors:
        option = tensor.options[0]
        info = type_info(option.type)
        weights[types[tensor.name]] = (
            weights.get(types[tensor.name], 0) + option.n_bytes // info.block_bytes * info.block_size
        )
    total = sum(weights.values()) or 1
    ordered = sorted(weights.items(), key=lambda item: (-item[1], type_info(item[0]).bits_per_weight))
    return {t.name: n / total for t, n in ordered}


def label_plan_rows(tensors: Sequence[TensorPlan], budgeted: bool) -> list[TensorPlan]:
    if not budgeted:
        return list(tensors)
    return [
        dataclasses.replace(t, why="budget plan") if t.decision.name == "OVERRIDE" else t for t in tensors
    ]


@dataclass
class BudgetSummary:
    request: str
    predicted_size: int
    minimum_size: int
    predicted_kld: float
    sensitivities: dict[str, float]  # per tensor role
    layer_factors: dict[int, float]  # per layer index
    types: dict[str, str]
    anchor: str = "free"
    label: str = ""  # the preset written to general.file_type (PRESET_OF_TYPE)
    mix: dict[str, float] = dataclasses.field(default_factory=dict)  # type -> share of the weights
    fit_warning: str | None = None  # set when the predicted KLD is implausible (fit_warning)


def summarise(budget: BudgetPlan | None) -> BudgetSummary | None:
    if budget is None:
        return None
    return BudgetSummary(
        request=budget.request.describe(),
        predicted_size=budget.predicted_size,
        minimum_size=budget.minimum_size,
        predicted_kld=budget.allocation.predicted_loss,
        sensitivities=dict(budget.sensitivities.roles),
        layer_factors=dict(budget.sensitivities.layers),
        types={name: t.name for name, t in sorted(budget.allocation.types.items())},
        anchor=budget.anchor,
        label=budget.label,
        mix=dict(budget.mix),
        fit_warning=budget.fit_warning,
    )
