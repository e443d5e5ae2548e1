"""Anchoring budgets to presets (quant.budget_anchor): never predicted worse than the preset's own plan at
the same size, and moved away from it only where the predictor is confident."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phiquant.quant.budget import Sensitivities, TensorOptions, TypeOption, allocate, predicted_loss_of
from phiquant.quant.budget_anchor import (
    TRUST_MARGIN,
    anchor_preset,
    anchored_allocation,
    choose_allocation,
    tensor_bytes,
)
from phiquant.quant.types import GGMLType
from tests.quant.test_budget import LADDER, tensor

ROLES = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 64), st.floats(0.1, 100.0), st.sampled_from(ROLES), st.integers(0, 5)),
        min_size=2,
        max_size=7,
    ),
    st.dictionaries(st.sampled_from(ROLES), st.floats(0.01, 10.0), min_size=4, max_size=4).map(Sensitivities),
)
def test_never_predicted_worse_than_the_preset_of_the_same_size(specs, sensitivities) -> None:
    tensors = [tensor(f"t{i}", 256 * n, scale, role) for i, (n, scale, role, _) in enumerate(specs)]
    preset = {f"t{i}": LADDER[level] for i, (_, _, _, level) in enumerate(specs)}
    budget = tensor_bytes(tensors, preset)
    assert budget is not None
    allocation, anchor = choose_allocation(tensors, budget, sensitivities, {"P": preset})
    assert allocation.tensor_bytes <= budget
    assert allocation.predicted_loss <= predicted_loss_of(tensors, preset, sensitivities) * (1 + 1e-12)
    assert anchor in {"free", "P"}
    if anchor == "free":  # chosen only when clearly better than the anchored plan
        anchored = anchored_allocation(tensors, preset, budget, sensitivities)
        assert anchored is not None and allocation.predicted_loss < anchored.predicted_loss


def test_a_small_predicted_gain_does_not_move_the_preset() -> None:
    # two equal tensors whose roles differ by 10% in sensitivity: the free allocation trades one step of
    # one for one step of the other, the anchored plan keeps the preset (the gain is within the margin)
    tensors = [tensor("a", 4096, 1.0, "ffn_up"), tensor("b", 4096, 1.0, "ffn_down")]
    sensitivities = Sensitivities({"ffn_up": 1.0, "ffn_down": 1.1})
    preset = {"a": GGMLType.Q5_K, "b": GGMLType.Q5_K}
    budget = tensor_bytes(tensors, preset)
    assert budget is not None
    anchored = anchored_allocation(tensors, preset, budget, sensitivities)
    assert anchored is not None and anchored.types == preset
    allocation, anchor = choose_allocation(tensors, budget, sensitivities, {"Q5_K_M": preset})
    assert (anchor, allocation.types) == ("Q5_K_M", preset)


def test_a_large_predicted_gain_is_taken() -> None:
    # the preset spends its bits on a role 100x less sensitive: swapping steps is a confident gain
    tensors = [tensor("a", 4096, 1.0, "ffn_up"), tensor("b", 4096, 1.0, "ffn_down")]
    sensitivities = Sensitivities({"ffn_up": 0.01, "ffn_down": 1.0})
    preset = {"a": GGMLType.Q6_K, "b": GGMLType.Q3_K}
    budget = tensor_bytes(tensors, preset)
    assert budget is not None
    anchored = anchored_allocation(tensors, preset, budget, sensitivities)
    assert anchored is not None
    assert anchored.types["b"] != GGMLType.Q3_K and anchored.types["a"] != GGMLType.Q6_K
    assert anchored.predicted_loss < (1 - TRUST_MARGIN) * predicted_loss_of(tensors, preset, sensitivities)


def test_a_budget_just_under_the_preset_takes_the_cheapest_downgrade() -> None:
    # the budget's metadata makes a file of a preset's size a little short of the preset's tensor bytes
    tensors = [tensor("small", 256, 0.5, "ffn_up"), tensor("large", 65536, 1.0, "ffn_down")]
    sensitivities = Sensitivities({"ffn_up": 1.0, "ffn_down": 1.0})
    preset = {"small": GGMLType.Q5_K, "large": GGMLType.Q5_K}
    budget = tensor_bytes(tensors, preset)
    assert budget is not None
    anchored = anchored_allocation(tensors, preset, budget - 10, sensitivities)
    assert anchored is not None and anchored.tensor_bytes <= budget - 10
    # either step frees enough; the small tensor's adds less loss (the large one's less per byte)
    assert anchored.types == {"small": GGMLType.Q4_K, "large": GGMLType.Q5_K}
    assert anchor_preset(tensors, {"P": preset}, budget - 10) == "P"


def test_the_anchor_is_the_largest_preset_that_fits() -> None:
    tensors = [tensor("a", 4096, 1.0), tensor("b", 4096, 1.0)]
    presets = {level.name: {"a": level, "b": level} for level in LADDER}
    q4 = tensor_bytes(tensors, presets["Q4_K"])
    assert q4 is not None
    assert anchor_preset(tensors, presets, q4) == "Q4_K"
    assert anchor_preset(tensors, presets, q4 + 1) == "Q4_K"
    assert anchor_preset(tensors, presets, 10) is None


def test_a_preset_outside_the_candidates_is_no_anchor() -> None:
    only_k = TensorOptions("a", "ffn_up", (TypeOption(GGMLType.Q4_K, 100, 0.1),))
    assert tensor_bytes([only_k], {"a": GGMLType.Q4_0}) is None
    none = Sensitivities({})
    assert anchored_allocation([only_k], {"a": GGMLType.Q4_0}, 100, none) is None
    allocation, anchor = choose_allocation([only_k], 100, none, {"Q4_0": {"a": GGMLType.Q4_0}})
    assert anchor == "free" and allocation == allocate([only_k], 100, none)
