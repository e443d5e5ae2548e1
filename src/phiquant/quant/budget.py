"""Choosing a type per tensor to minimise the model's predicted loss under a size budget (pure functions).

The prediction.  A weight matrix W quantized to W' changes its output y = W x by (W' - W) x, whose
expected square over the calibration activations is sum_ij imp_j (W'_ij - W_ij)^2, imp_j being the
importance matrix (mean x_j^2).  Relative to the output's own size, sum_ij imp_j W_ij^2, that is the
tensor's *relative weighted error* e_t(type), measured with ggml's own quantizers on the real weights
(quant.tensor_error).  For small perturbations the KL divergence of the next-token distribution is a
quadratic form in the logit change and, across independent tensors, close to additive, so

    predicted KLD = sum_t s_t * e_t(type_t),    s_t = s_{role(t)} * f_{layer(t)}

with one sensitivity per tensor role (attn_qkv, attn_output, ffn_up, ffn_down, output, token_embd, ...)
times one factor per layer (1 for tensors outside the layers), both calibrated against KL divergences
measured on the model (workflows.budget.calibration).  The layer factor matters: the first and last
layers move the KLD several times more per unit of error than the middle ones, which a role-only
predictor cannot see.

The allocation.  Minimising a separable sum under a total-bytes constraint is a multiple-choice knapsack.
Each tensor's options are reduced to their lower convex hull in (bytes, loss); upgrades are then taken
greedily by loss saved per byte added, which is the Lagrangian solution: optimal for every budget that
falls on a hull point, and within one upgrade of optimal otherwise.  An upgrade that does not fit is
skipped and cheaper ones further down the queue are still tried, so little of the budget is left unused.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from phiquant.errors import PhiquantError
from phiquant.quant.types import GGMLType


@dataclass(frozen=True)
class TypeOption:
    type: GGMLType
    n_bytes: int
    error: float  # relative importance-weighted squared error (0 for lossless)


@dataclass(frozen=True)
class TensorOptions:
    name: str
    role: str  # the sensitivity group (rules.tensor_category value)
    options: tuple[TypeOption, ...]
    layer: int | None = None  # the block index of blk.N.* tensors


@dataclass(frozen=True)
class Sensitivities:
    """Predicted KLD per unit of relative weighted error: a tensor role's sensitivity times its layer's
    factor (1 where none was measured)."""

    roles: Mapping[str, float]
    layers: Mapping[int, float] = field(default_factory=dict)
    # the largest mean KLD any calibration file measured: how far the fit's evidence reaches (None: unknown)
    worst_measured_kld: float | None = None

    def of(self, tensor: TensorOptions) -> float:
        role = self.roles.get(tensor.role, 1.0)
        return role if tensor.layer is None else role * self.layers.get(tensor.layer, 1.0)


@dataclass(frozen=True)
class Allocation:
    types: dict[str, GGMLType]  # tensor -> chosen type
    tensor_bytes: int  # bytes of the chosen tensors
    predicted_loss: float  # sum of sensitivity * error: the predicted mean KL divergence (nats)


def predicted_loss(option: TypeOption, sensitivity: float) -> float:
    return sensitivity * option.error


def convex_hull(options: Sequence[TypeOption], sensitivity: float) -> list[TypeOption]:
    """The options on the lower convex hull of (bytes, loss), cheapest first: every other option is
    dominated by a mix of two hull options, so the greedy never needs it."""
    by_size: list[TypeOption] = []
    for option in sorted(options, key=lambda o: (o.n_bytes, o.error)):
        if by_size and option.n_bytes == by_size[-1].n_bytes:
            continue  # same size, larger error
        if by_size and option.error >= by_size[-1].error:
            continue  # bigger and no better
        by_size.append(option)
    hull: list[TypeOption] = []
    for option in by_size:
        while len(hull) >= 2 and _slope(hull[-2], hull[-1], sensitivity) >= _slope(
            hull[-1], option, sensitivity
        ):
            hull.pop()  # hull[-1] saves less per byte than going straight to `option`
        hull.append(option)
    return hull


def _slope(cheaper: TypeOption, dearer: TypeOption, sensitivity: float) -> float:
    """Loss saved per byte added (negative: loss goes down as bytes go up)."""
    return (predicted_loss(dearer, sensitivity) - predicted_loss(cheaper, sensitivity)) / (
        dearer.n_bytes - cheaper.n_bytes
    )


def minimum_bytes(tensors: Sequence[TensorOptions]) -> int:
    return sum(min(o.n_bytes for o in t.options) for t in tensors)


def allocate(tensors: Sequence[TensorOptions], budget_bytes: int, sensitivities: Sensitivities) -> Allocation:
    """The types that minimise the predicted loss with the tensors' bytes at most `budget_bytes`."""
    floor = minimum_bytes(tensors)
    if budget_bytes < floor:
        raise PhiquantError(
            f"the budget leaves {budget_bytes} bytes for the quantized tensors; the smallest types need {floor}"
        )
    sensitivity = {t.name: sensitivities.of(t) for t in tensors}
    hulls = {t.name: convex_hull(t.options, sensitivity[t.name]) for t in tensors}
    position = {name: 0 for name in hulls}
    spent = sum(hull[0].n_bytes for hull in hulls.values())
    queue: list[tuple[float, str]] = []

    def offer(name: str) -> None:
        hull, at = hulls[name], position[name]
        if at + 1 < len(hull):
            heapq.heappush(queue, (_slope(hull[at], hull[at + 1], sensitivity[name]), name))

    for name in hulls:
        offer(name)
    while queue:
        _, name = heapq.heappop(queue)  # the steepest loss decrease per byte first
        hull, at = hulls[name], position[name]
        added = hull[at + 1].n_bytes - hull[at].n_bytes
        if spent + added > budget_bytes:
            continue  # does not fit; this tensor stays, smaller upgrades elsewhere may still fit
        spent += added
        position[name] = at + 1
        offer(name)
    chosen = {name: hulls[name][position[name]] for name in hulls}
    loss = sum(predicted_loss(chosen[name], sensitivity[name]) for name in chosen)
    return Allocation({name: option.type for name, option in chosen.items()}, spent, loss)


def predicted_loss_of(
    tensors: Sequence[TensorOptions], types: Mapping[str, GGMLType], sensitivities: Sensitivities
) -> float:
    """The predicted loss of a given assignment (e.g. a preset's), for comparison with an allocation."""
    total = 0.0
    for tensor in tensors:
        option = next((o for o in tensor.options if o.type == types.get(tensor.name)), None)
        if option is not None:
            total += predicted_loss(option, sensitivities.of(tensor))
    return total


def parse_size(text: str) -> int:
    """'3.2G', '850M', '512KiB', '123456' -> bytes (K/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}  # fmt: skip
    cleaned = text.strip().upper()
    number = cleaned.rstrip("KMGIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise PhiquantError(f"--max-size wants a size such as 3.2G, 850M or 512MiB, not {text!r}")
    return int(value * units[unit])
