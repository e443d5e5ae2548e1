"""Anchoring a size budget to llama.cpp's presets: never predicted worse than a preset of the same size.

Why.  A preset's per-tensor plan (quant.plan) is a feasible point of the same knapsack that
quant.budget.allocate solves, and it encodes knowledge the predictor lacks: the predictor has one
sensitivity per tensor role and one factor per layer, fitted from probes at one bit level
(workflows.budget.calibration), so it cannot see that the V third of a fused attn_qkv matters more than Q
and K, nor how a role's weight varies from layer to layer beyond the shared factor, which llama.cpp's
rules (use_more_bits, attn_v/ffn_down upgrades) partly encode.  Where presets are poor, a free allocation
gains much; where they are good, the predictor's own error can be larger than the gain it claims, and
following it would make the file worse than the preset.  (The README's budget section has the figures.)

How.  Take the largest preset that fits the budget (give or take FIT_SLACK; anchor_preset), start from
its plan and move only where the predictor is confident:
1. fit: if the preset (plus the budget's metadata) is over the budget, take the downgrade that costs
   the least predicted loss among those freeing enough bytes, else the least per byte freed, repeatedly;
2. fill: spend bytes left over on the upgrades that save the most predicted loss per byte;
3. exchange: swap one step up on one tensor against one step down on another only when the predicted
   gain exceeds TRUST_MARGIN times the predicted loss of the two tensors touched (the part of the
   prediction that could be wrong), so a swap rests on a clear difference, not on the predictor's noise.
The free allocation is then chosen only if it is predicted better than the anchored plan by more than
FREE_MARGIN of that plan's loss; otherwise the anchored plan is, and the file records which.  The margin
is smaller than TRUST_MARGIN because it is relative to the whole model's loss, most of which both plans
share, and the predictor's error on that total is largest where the claimed gain is smallest.
Either way the result is never predicted worse than the preset's own plan when the budget holds that
plan (and worse only by the cheapest fit step when the budget is a little short of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from phiquant.quant.budget import (
    Allocation,
    Sensitivities,
    TensorOptions,
    TypeOption,
    allocate,
    predicted_loss,
)
from phiquant.quant.types import GGMLType

# The relative error the predictor is trusted to: a move must beat this share of the loss
# it touches.  At Q4_K_M/Q5_K_M the free plan's predicted gains were 10-15% and measured as losses.
TRUST_MARGIN = 0.25
FREE_MARGIN = 0.10  # the free allocation must beat the anchored one's total predicted loss by this share
MAX_EXCHANGES = 1000  # each exchange lowers the predicted loss, so this only bounds the work
# The anchor is the largest preset that fits the budget but for this share, which the fit step frees
# (the budget's own metadata and page padding make a file at a preset's size a little short of it).
FIT_SLACK = 0.02


def _state_loss(
    tensors: Sequence[TensorOptions], chosen: Mapping[str, TypeOption], sens: Sensitivities
) -> float:
    return sum(predicted_loss(chosen[t.name], sens.of(t)) for t in tensors)


def _sorted_options(tensor: TensorOptions) -> list[TypeOption]:
    return sorted(tensor.options, key=lambda o: (o.n_bytes, o.error))


def _neighbours(tensor: TensorOptions, current: TypeOption) -> tuple[TypeOption | None, TypeOption | None]:
    """The next cheaper and next dearer option than `current` (one step each way)."""
    ordered = _sorted_options(tensor)
    at = ordered.index(current)
    return (ordered[at - 1] if at > 0 else None), (ordered[at + 1] if at + 1 < len(ordered) else None)


Tensors = Sequence[TensorOptions]
Chosen = dict[str, TypeOption]


def _fit(tensors: Tensors, chosen: Chosen, budget: int, sens: Sensitivities) -> int:
    """Downgrade until the bytes fit; returns the bytes.  A downgrade that alone frees enough is taken by
    least predicted loss added (the usual case: a few KiB of metadata); otherwise by least per byte."""
    spent = sum(o.n_bytes for o in chosen.values())
    while spent > budget:
        moves = [
            (predicted_loss(o, sens.of(t)) - predicted_loss(chosen[t.name], sens.of(t)),
             chosen[t.name].n_bytes - o.n_bytes, t.name, o)
            for t in tensors for o in t.options if o.n_bytes < chosen[t.name].n_bytes
        ]  # fmt: skip
        if not moves:
            break
        enough = [m for m in moves if m[1] >= spent - budget]
        _, _, name, option = (
            min(enough, key=lambda m: m[0]) if enough else min(moves, key=lambda m: m[0] / m[1])
        )
        spent += option.n_bytes - chosen[name].n_bytes
        chosen[name] = option
    return spent


def _fill(tensors: Tensors, chosen: Chosen, spent: int, budget: int, sens: Sensitivities) -> int:
    """Upgrade by most predicted loss saved per byte while an upgrade fits; returns the bytes."""
    while True:
        moves = [
            ((predicted_loss(o, sens.of(t)) - predicted_loss(chosen[t.name], sens.of(t)))
             / (o.n_bytes - chosen[t.name].n_bytes), t.name, o)
            for t in tensors for o in t.options
            if chosen[t.name].n_bytes < o.n_bytes <= chosen[t.name].n_bytes + budget - spent
            and o.error < chosen[t.name].error
        ]  # fmt: skip
        if not moves:
            return spent
        _, name, option = min(moves, key=lambda m: m[0])
        spent += option.n_bytes - chosen[name].n_bytes
        chosen[name] = option


def _best_exchange(
    tensors: Tensors, chosen: Chosen, spent: int, budget: int, sens: Sensitivities
) -> tuple[str, TypeOption, str, TypeOption] | None:
    """The confident one-step-up/one-step-down swap with the largest predicted gain, if any."""
    steps = {t.name: _neighbours(t, chosen[t.name]) for t in tensors}
    weight = {t.name: sens.of(t) for t in tensors}
    best, best_gain = None, 0.0
    for up_name, (_, up) in steps.items():
        if up is None:
            continue
        up_delta = predicted_loss(up, weight[up_name]) - predicted_loss(chosen[up_name], weight[up_name])
        for down_name, (down, _) in steps.items():
            if down is None or down_name == up_name:
                continue
            if (
                spent + up.n_bytes - chosen[up_name].n_bytes - chosen[down_name].n_bytes + down.n_bytes
                > budget
            ):
                continue
            down_loss = predicted_loss(down, weight[down_name])
            gain = -(up_delta + down_loss - predicted_loss(chosen[down_name], weight[down_name]))
            touched = predicted_loss(chosen[up_name], weight[up_name]) + down_loss
            if gain > TRUST_MARGIN * touched and gain > best_gain:
                best, best_gain = (up_name, up, down_name, down), gain
    return best


def anchored_allocation(
    tensors: Sequence[TensorOptions],
    start: Mapping[str, GGMLType],
    budget_bytes: int,
    sensitivities: Sensitivities,
) -> Allocation | None:
    """The preset plan `start` fitted to the budget and improved by confident moves only; None when the
    preset uses a type that is not among a tensor's candidates (it is then no point of this knapsack)."""
    chosen: dict[str, TypeOption] = {}
    for tensor in tensors:
        option = next((o for o in tensor.options if o.type == start.get(tensor.name)), None)
        if option is None:
            return None
        chosen[tensor.name] = option
    spent = _fit(tensors, chosen, budget_bytes, sensitivities)
    if spent > budget_bytes:
        return None
    spent = _fill(tensors, chosen, spent, budget_bytes, sensitivities)
    for _ in range(MAX_EXCHANGES):
        move = _best_exchange(tensors, chosen, spent, budget_bytes, sensitivities)
        if move is None:
            break
        up_name, up, down_name, down = move
        spent += up.n_bytes - chosen[up_name].n_bytes + down.n_bytes - chosen[down_name].n_bytes
        chosen[up_name], chosen[down_name] = up, down
    loss = _state_loss(tensors, chosen, sensitivities)
    return Allocation({name: o.type for name, o in chosen.items()}, spent, loss)


def tensor_bytes(tensors: Sequence[TensorOptions], plan: Mapping[str, GGMLType]) -> int | None:
    """The bytes of a per-tensor assignment, None when it uses a type outside a tensor's candidates."""
    total = 0
    for tensor in tensors:
        option = next((o for o in tensor.options if o.type == plan.get(tensor.name)), None)
        if option is None:
            return None
        total += option.n_bytes
    return total


def anchor_preset(
    tensors: Sequence[TensorOptions], presets: Mapping[str, Mapping[str, GGMLType]], budget_bytes: int
) -> str | None:
    """The largest preset whose plan fits `budget_bytes` give or take FIT_SLACK."""
    sizes = {name: tensor_bytes(tensors, plan) for name, plan in presets.items()}
    fitting = {
        name: size
        for name, size in sizes.items()
        if size is not None and size <= (1 + FIT_SLACK) * budget_bytes
    }
    return max(fitting, key=lambda name: fitting[name]) if fitting else None


def choose_allocation(
    tensors: Sequence[TensorOptions],
    budget_bytes: int,
    sensitivities: Sensitivities,
    presets: Mapping[str, Mapping[str, GGMLType]],
) -> tuple[Allocation, str]:
    """The free allocation, unless the one anchored to the nearest preset (anchor_preset) is predicted
    within FREE_MARGIN of it; returns the allocation and its anchor ("free" or the preset's name)."""
    free = allocate(tensors, budget_bytes, sensitivities)
    name = anchor_preset(tensors, presets, budget_bytes)
    anchored = (
        None if name is None else anchored_allocation(tensors, presets[name], budget_bytes, sensitivities)
    )
    if name is None or anchored is None or free.predicted_loss < (1 - FREE_MARGIN) * anchored.predicted_loss:
        return free, "free"
    return anchored, name
