"""What a budget plan says about itself (quant.budget_plan): the preset it is labelled with describes the
mix of its weights, and a sensitivity fit that cannot be trusted is refused or flagged, never reported
as a plain figure.  The fits are forced wrong by their inputs: the measured KL divergences and errors."""

from __future__ import annotations

import math

import pytest

from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.quant.budget import Sensitivities, TensorOptions, TypeOption
from phiquant.quant.budget_plan import (
    IMPLAUSIBLE_FACTOR,
    KEY_PREFIX,
    BudgetPlan,
    BudgetRequest,
    plan_budget,
    summarise,
)
from phiquant.quant.types import GGMLType
from phiquant.workflows.budget.calibration import calibration_probes, fit_probes, sensitivities_from_kld
from tests.quant.test_budget import BITS, tensor

HEADER_BYTES = 4096  # what the file holds besides the budgeted tensors


def size_of_tensors(tensors: list[TensorOptions]):
    """The file size of an assignment: its tensors' bytes plus a fixed header (the planner's part)."""
    sizes = {(t.name, o.type.name): o.n_bytes for t in tensors for o in t.options}

    def size_of(types: dict[str, str], metadata: list[Metadatum]) -> int:
        return HEADER_BYTES + sum(sizes[name, type_name] for name, type_name in types.items())

    return size_of


def plan(tensors: list[TensorOptions], sensitivities: Sensitivities, max_bytes: int) -> BudgetPlan:
    n_elements = sum(t.options[0].n_bytes * 8 * 256 // (84 * 8) for t in tensors)  # Q2_K: 84 bytes / 256
    return plan_budget(
        BudgetRequest(max_bytes=max_bytes), tensors, sensitivities, size_of_tensors(tensors), n_elements, 0
    )


def test_label_is_the_type_holding_most_weights_not_most_bytes() -> None:
    # 30% of the weights in a sensitive token embedding, 70% in four insensitive matrices: the embedding
    # gets Q8_0 and the matrices Q2_K, so Q8_0 holds more bytes but Q2_K holds most weights.
    embedding = tensor("token_embd.weight", 49152, 1.0, "token_embd")
    matrices = [tensor(f"blk.{i}.ffn_up.weight", 28672, 1.0, "ffn_up", i) for i in range(4)]
    tensors = [embedding, *matrices]
    budget = HEADER_BYTES + int(49152 * BITS[GGMLType.Q8_0] / 8) + int(4 * 28672 * BITS[GGMLType.Q2_K] / 8)
    result = plan(tensors, Sensitivities({"token_embd": 1e6, "ffn_up": 1e-6}), budget)
    assert result.allocation.types["token_embd.weight"] == GGMLType.Q8_0
    assert {result.allocation.types[t.name] for t in matrices} == {GGMLType.Q2_K}
    q8_bytes = int(49152 * BITS[GGMLType.Q8_0] / 8)
    assert q8_bytes > 4 * int(28672 * BITS[GGMLType.Q2_K] / 8)  # counting bytes would say Q8_0
    assert result.mix == pytest.approx({"Q2_K": 0.7, "Q8_0": 0.3})
    assert list(result.mix) == ["Q2_K", "Q8_0"]
    assert result.label == "Q2_K"
    summary = summarise(result)
    assert summary is not None and summary.label == "Q2_K" and summary.mix == result.mix


@pytest.mark.parametrize("type_and_label", [(GGMLType.Q3_K, "Q3_K_M"), (GGMLType.Q4_K, "Q4_K_M")])
def test_k_quant_labels_follow_llama_cpp_loader_mapping(type_and_label) -> None:
    # llama-model-loader.cpp names a file whose most common type is Q3_K / Q4_K as MOSTLY_Q3_K_M / _Q4_K_M
    ggml_type, label = type_and_label
    tensors = [tensor(f"blk.{i}.ffn_up.weight", 4096, 1.0, "ffn_up", i) for i in range(3)]
    budget = HEADER_BYTES + 3 * int(4096 * BITS[ggml_type] / 8)
    result = plan(tensors, Sensitivities({"ffn_up": 1.0}), budget)
    assert set(result.allocation.types.values()) == {ggml_type}
    assert result.label == label


@pytest.mark.parametrize("probe_kld", [math.nan, math.inf])
def test_a_calibration_kld_that_is_not_a_number_refuses_the_plan(probe_kld: float) -> None:
    tensors = [
        tensor("blk.0.attn_qkv.weight", 4096, 1.0, "attn_qkv", 0),
        tensor("blk.0.ffn_up.weight", 4096, 1.0),
    ]
    fitted = sensitivities_from_kld(tensors, 0.01, {"attn_qkv": probe_kld, "ffn_up": 0.02})
    with pytest.raises(PhiquantError, match="cannot be trusted.*sensitivity of attn_qkv"):
        plan(tensors, fitted, HEADER_BYTES + 2 * int(4096 * BITS[GGMLType.Q4_K] / 8))


def noisy_tensor(name: str, n: int) -> TensorOptions:
    """A tensor whose Q3_K error is all but Q8_0's: a probe's KLD change over it is noise over ~0."""
    errors = {GGMLType.Q2_K: 0.5, GGMLType.Q3_K: 1e-3 + 1e-7, GGMLType.Q4_K: 1e-3 + 5e-8}
    errors |= {GGMLType.Q5_K: 1e-3 + 2e-8, GGMLType.Q6_K: 1e-3 + 1e-8, GGMLType.Q8_0: 1e-3}
    return TensorOptions(
        name, "attn_qkv", tuple(TypeOption(t, int(n * BITS[t] / 8), e) for t, e in errors.items()), 0
    )


def test_a_fit_on_noise_far_beyond_the_measurements_is_flagged_in_the_plan_and_the_file() -> None:
    tensors = [noisy_tensor("blk.0.attn_qkv.weight", 4096), tensor("blk.0.ffn_up.weight", 4096, 1.0, layer=0)]
    # attn_qkv's probe moved the KLD by 0.05 nats of noise over an error change of 1e-7
    fitted = sensitivities_from_kld(tensors, 0.01, {"attn_qkv": 0.06, "ffn_up": 0.02})
    assert fitted.worst_measured_kld == pytest.approx(0.06)
    result = plan(tensors, fitted, HEADER_BYTES + 2 * int(4096 * BITS[GGMLType.Q4_K] / 8))
    assert result.allocation.predicted_loss > IMPLAUSIBLE_FACTOR * 0.06
    assert result.fit_warning is not None
    assert (
        "calibration" in result.fit_warning
        and f"{result.allocation.predicted_loss:.5g}" in result.fit_warning
    )
    recorded = {m.key: m.value for m in result.metadata()}
    assert recorded[KEY_PREFIX + "fit_warning"] == result.fit_warning
    summary = summarise(result)
    assert summary is not None and summary.fit_warning == result.fit_warning


def test_a_consistent_fit_at_the_smallest_budget_is_not_flagged() -> None:
    # KLDs that are additive in a true model, 4 roles x 4 layers; the plan at the floor predicts more
    # than any single probe measured (it lowers every tensor), but within the margin
    roles = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
    tensors = [tensor(f"blk.{i}.{r}.weight", 4096, 1.0, r, i) for r in roles for i in range(4)]
    truth = Sensitivities(dict(zip(roles, (3.0, 1.0, 2.0, 4.0))), {0: 2.0, 1: 1.0, 2: 1.0, 3: 1.5})
    measured = {
        label: 0.01
        + sum(truth.of(t) * (t.options[1].error - t.options[-1].error) for t in tensors if t.name in members)
        for label, members in calibration_probes(tensors).items()
    }
    fitted = fit_probes(tensors, measured)
    result = plan(tensors, fitted, HEADER_BYTES + 16 * int(4096 * BITS[GGMLType.Q2_K] / 8))
    assert set(result.allocation.types.values()) == {GGMLType.Q2_K}
    assert result.allocation.predicted_loss > max(measured.values())
    assert result.fit_warning is None
    assert KEY_PREFIX + "fit_warning" not in {m.key for m in result.metadata()}
