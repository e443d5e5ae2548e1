"""Every preset, with and without an imatrix, on five synthetic models: our plan and our bytes against the
file llama.cpp's own llama_model_quantize writes for the same input.

Where llama.cpp refuses (very low-bit presets without an imatrix, Q1_0 on rows that fit no 128-block),
phiquant must refuse too, for the same reason.
"""

from __future__ import annotations

import pytest

from phiquant.errors import PhiquantError
from phiquant.quant.plan import QuantOptions, QuantPlan, plan_quantization
from phiquant.quant.types import LlamaFtype, Preset
from tests.quant.conftest import LLAMA_PRESETS, Oracle, assert_plan_matches_reference, reference_layout
from tests.quant.synthetic import GQA4, MAIN, ODD_ROWS, PHIMOE, TIED, SyntheticModel, tensor_descs

MODELS = (MAIN, GQA4, TIED, ODD_ROWS, PHIMOE)

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


def _assert_same_refusal(log: str, error: PhiquantError) -> None:
    reasons = [ours for theirs, ours in REFUSALS.items() if theirs in log]
    assert reasons, f"llama.cpp failed for a reason this test does not know:\n{log[-3000:]}"
    assert any(reason in str(error) for reason in reasons), (str(error), log[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("preset", LLAMA_PRESETS, ids=lambda preset: preset.name)
@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.label)
def test_plan_and_bytes_equal_llama_cpp_output(
    oracle: Oracle, model: SyntheticModel, preset: Preset, with_imatrix: bool
) -> None:
    result = oracle.preset_result(model, preset, with_imatrix)
    assert result.signal is None, f"llama.cpp aborted:\n{result.log[-3000:]}"
    if not result.succeeded:
        with pytest.raises(PhiquantError) as refused:
            _plan(model, preset, with_imatrix)
        _assert_same_refusal(result.log, refused.value)
        return

    plan = _plan(model, preset, with_imatrix)
    layout = reference_layout(result)
    assert layout.get("general.file_type") == preset.ftype
    assert_plan_matches_reference(oracle, model, plan, layout, with_imatrix)


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
