"""`quantize --max-size / --target-bpw`: a per-tensor type plan for a size budget, and what the file records.

The steps: measure every quantizable tensor's error for each candidate type (quant.tensor_error),
calibrate one sensitivity per tensor role and one factor per layer against KL divergences measured on the
model over the calibration text (workflows.budget.calibration), allocate under the budget
(quant.budget.allocate), and hand the choice to the ordinary planner as exact per-tensor overrides, so the file is written by the same path
as every preset.  The measured profile is cached per model and importance matrix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gguf import GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.quant.budget import Allocation, Sensitivities, TensorOptions, minimum_bytes
from phiquant.quant.budget_anchor import FREE_MARGIN, TRUST_MARGIN, choose_allocation
from phiquant.quant.plan import TensorPlan
from phiquant.quant.types import GGMLType

METHOD = (
    "greedy on the convex hull of each tensor's (bytes, predicted KLD); predicted KLD = role sensitivity x "
    "layer factor x importance-weighted relative ggml quantization error; both fitted to measured KLD; "
    "anchored to a preset of about the same size unless clearly predicted better (quant.budget_anchor)"
)
KEY_PREFIX = "phiquant.budget."
MAX_FIT_ROUNDS = 8


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
        ]


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
    share = limit - measured
    for _ in range(MAX_FIT_ROUNDS):
        allocation, anchor = choose_allocation(
            tensors, max(share, minimum_bytes(tensors)), sensitivities, presets or {}
        )
        draft = BudgetPlan(request, allocation, sensitivities, 0, minimum_file, anchor)
        types = {name: t.name for name, t in allocation.types.items()}
        size = size_of(types, draft.metadata())
        used = size if request.max_bytes is not None else allocation.tensor_bytes + fixed_tensor_bytes
        if used <= limit:
            return BudgetPlan(request, allocation, sensitivities, size, minimum_file, anchor)
        share -= used - limit  # padding and longer type names in the metadata: take it off and retry
    raise PhiquantError(f"could not fit the plan into {request.describe()}")


def budget_request(
    max_size: int | None,
    target_bpw: float | None,
    names: list[str],
    tensor_types: Sequence[tuple[str, str]],
    output_type: str | None,
    embedding_type: str | None,
    pure: bool,
) -> BudgetRequest | None:
    """The budget asked for, after refusing what cannot combine with one."""
    if max_size is None and target_bpw is None:
        return None
    if max_size is not None and target_bpw is not None:
        raise PhiquantError("give --max-size or --target-bpw, not both")
    if names:
        raise PhiquantError("a size budget chooses every tensor's type: give no -t/--type with it")
    if tensor_types or output_type or embedding_type or pure:
        raise PhiquantError(
            "a size budget chooses every tensor's type: --tensor-type, --output-type, --embedding-type "
            "and --pure do not combine with it"
        )
    if target_bpw is not None and not 0 < target_bpw <= 32:
        raise PhiquantError(f"--target-bpw must be between 0 and 32 bits, not {target_bpw}")
    return BudgetRequest(max_bytes=max_size, target_bpw=target_bpw)


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
    )
