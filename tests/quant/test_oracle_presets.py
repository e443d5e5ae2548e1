"""Every preset, with and without an imatrix, on five synthetic models: our plan and our bytes against the
file llama.cpp's own llama_model_quantize writes for the same input.  Two of the models (grouped-query
attention with n_gqa >= 4, a tied output) exist for llama.cpp's type rules, not for new kernels, and the
PhiMoE one's stacked experts are compared byte for byte, whole file, on every preset in
test_phimoe_quantization.py: those three are checked against llama.cpp's dry run (every tensor's type).
The bytes of every type are checked here on the dense model and the one with rows that fit no block.

Where llama.cpp refuses (very low-bit presets without an imatrix, Q1_0 on rows that fit no 128-block),
phiquant must refuse too, for the same reason.
"""

from __future__ import annotations

import pytest

from phiquant.errors import PhiquantError
from phiquant.quant.plan import QuantOptions, QuantPlan, plan_quantization
from phiquant.quant.types import LlamaFtype, Preset
from tests.quant.conftest import (
    LLAMA_PRESETS,
    Oracle,
    assert_plan_matches_reference,
    assert_types_equal_dry_run,
    reference_layout,
)
from tests.quant.llama_reference import ReferenceResult
from tests.quant.synthetic import GQA4, MAIN, ODD_ROWS, PHIMOE, TIED, SyntheticModel, tensor_descs

BYTE_MODELS = (MAIN, ODD_ROWS)
RULE_MODELS = (GQA4, TIED, PHIMOE)

# llama.cpp's log line for a refusal -> the words our PhiquantError must contain for the same refusal.
REFUSALS = {
    "requires an imatrix": "needs an importance matrix",
    "Missing importance matrix": "needs an importance matrix",
    "no tensor type fallback is defined": "defines no fallback",
}


def _plan(
    model: SyntheticModel, preset: Preset, with_imatrix: bool, allow_fallback: bool = True
) -> QuantPlan:
    options = QuantOptions(has_imatrix=with_imatrix, allow_fallback=allow_fallback)
    return plan_quantization(tensor_descs(model), model.facts, preset, options)


def _assert_refused_alike(model: SyntheticModel, preset: Preset, with_imatrix: bool, log: str) -> None:
    with pytest.raises(PhiquantError) as refused:
        _plan(model, preset, with_imatrix)
    reasons = [ours for theirs, ours in REFUSALS.items() if theirs in log]
    assert reasons, f"llama.cpp failed for a reason this test does not know:\n{log[-3000:]}"
    assert any(reason in str(refused.value) for reason in reasons), (str(refused.value), log[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("preset", LLAMA_PRESETS, ids=lambda preset: preset.name)
@pytest.mark.parametrize("model", BYTE_MODELS, ids=lambda model: model.label)
def test_plan_and_bytes_equal_llama_cpp_output(
    oracle: Oracle, model: SyntheticModel, preset: Preset, with_imatrix: bool
) -> None:
    result = oracle.preset_result(model, preset, with_imatrix)
    assert result.signal is None, f"llama.cpp aborted:\n{result.log[-3000:]}"
    if not result.succeeded:
        _assert_refused_alike(model, preset, with_imatrix, result.log)
        return

    plan = _plan(model, preset, with_imatrix)
    layout = reference_layout(result)
    assert layout.get("general.file_type") == preset.ftype
    assert_plan_matches_reference(oracle, model, plan, layout, with_imatrix)


@pytest.fixture(scope="module")
def rule_dry_runs(oracle: Oracle) -> dict[tuple[str, str, bool], ReferenceResult]:
    keys = [(m, p, imatrix) for m in RULE_MODELS for p in LLAMA_PRESETS for imatrix in (False, True)]
    jobs = [oracle.job(m, int(p.ftype), imatrix, dry_run=True) for m, p, imatrix in keys]
    return {(m.label, p.name, imatrix): r for (m, p, imatrix), r in zip(keys, oracle.run(jobs), strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("preset", LLAMA_PRESETS, ids=lambda preset: preset.name)
# Not named "model": the oracle fixture runs full sweeps for the models that tests take as "model".
@pytest.mark.parametrize("rule_model", RULE_MODELS, ids=lambda model: model.label)
def test_plan_types_equal_llama_cpp_dry_run(
    rule_dry_runs: dict[tuple[str, str, bool], ReferenceResult],
    rule_model: SyntheticModel,
    preset: Preset,
    with_imatrix: bool,
) -> None:
    model = rule_model
    result = rule_dry_runs[(model.label, preset.name, with_imatrix)]
    assert result.signal is None, f"llama.cpp aborted:\n{result.log[-3000:]}"
    if not result.succeeded:
        _assert_refused_alike(model, preset, with_imatrix, result.log)
        return
    assert_types_equal_dry_run(result, lambda: _plan(model, preset, with_imatrix))


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    [
        p
        for p in LLAMA_PRESETS
        if p.ftype not in (LlamaFtype.ALL_F32, LlamaFtype.MOSTLY_F16, LlamaFtype.MOSTLY_BF16)
    ],
    ids=lambda preset: preset.name,
)
def test_fallback_needs_permission_where_llama_cpp_substitutes_silently(
    oracle: Oracle, preset: Preset
) -> None:
    result = oracle.preset_result(ODD_ROWS, preset, with_imatrix=True)
    if not result.succeeded:
        pytest.skip("llama.cpp refuses this preset on these rows (checked in the test above)")
    plan = _plan(ODD_ROWS, preset, with_imatrix=True)
    # llama.cpp counts each substitution in its log ("N of M tensor(s) required fallback quantization").
    assert (len(plan.fallbacks) > 0) == ("required fallback quantization" in result.log)
    for tensor in plan.fallbacks:
        assert tensor.fallback_from != tensor.target_type
    if plan.fallbacks:
        with pytest.raises(PhiquantError, match=plan.fallbacks[0].name.replace(".", r"\.")):
            _plan(ODD_ROWS, preset, with_imatrix=True, allow_fallback=False)
        assert any("does not fit" in note for note in plan.notes)
    else:
        assert _plan(ODD_ROWS, preset, True, allow_fallback=False).tensors == plan.tensors
