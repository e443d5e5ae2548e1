"""Options against llama.cpp: --tensor-type overrides (tt_overrides), output/embedding types, pure,
leave-output-tensor, requantizing, NVFP4, kv overrides and the inputs that make llama.cpp abort.

Each case is one row of CASES; the llama.cpp parameters are derived from the same QuantOptions, so the
two sides cannot drift apart.  All reference runs happen in one batch.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, replace

import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.gguf_io import read_gguf
from phiquant.quant.plan import Decision, QuantOptions, TensorDesc, plan_quantization
from phiquant.quant.quantize import check_source_data, imatrix_kv_overrides, quantize_rows
from phiquant.quant.types import QUANTIZE_TARGETS, GGMLType, LlamaFtype, parse_ggml_type, parse_preset
from tests.quant.conftest import (
    Oracle,
    assert_plan_matches_reference,
    reference_layout,
    reference_tensor_bytes,
)
from tests.quant.llama_reference import KV_INT, KV_STR, ReferenceJob, ReferenceResult
from tests.quant.synthetic import MAIN, ODD_ROWS, PHIMOE, TIED, SyntheticModel, tensor_descs, write_model


@dataclass(frozen=True)
class OptionCase:
    id: str
    model: SyntheticModel
    preset: str
    options: QuantOptions
    llama_outcome: str = "same"  # "aborts": GGML_ASSERT kills the process; "fails": returns 1.
    # Either way phiquant must raise a PhiquantError instead.


QO = QuantOptions
CASES = (
    OptionCase("override-every-qkv", MAIN, "Q4_K_M", QO(tensor_types=(("attn_qkv", "q8_0"),))),
    # An override equal to the preset default still counts as manual: the attn_v counter does not
    # advance for layers 0-2, so the use_more_bits schedule shifts for the later layers.
    OptionCase(
        "override-equal-to-default", MAIN, "Q4_K_M", QO(tensor_types=((r"blk\.[0-2]\.attn_qkv", "q4_K"),))
    ),
    OptionCase(
        "first-match-wins",
        MAIN,
        "Q4_K_M",
        QO(tensor_types=(("ffn_down", "q5_k"), (r"blk\.0\.ffn_down", "q8_0")), has_imatrix=True),
    ),
    OptionCase("override-output", MAIN, "Q3_K_M", QO(tensor_types=(("output", "Q8_0"),))),
    OptionCase(
        "override-then-fallback",
        ODD_ROWS,
        "Q4_K_M",
        QO(tensor_types=(("ffn_up", "q4_k"), ("attn_output", "iq4_xs")), allow_fallback=True),
    ),
    OptionCase(
        "override-experts",
        PHIMOE,
        "Q4_K_M",
        QO(
            tensor_types=(("ffn_down_exps", "q8_0"), (r"blk\.[0-3]\.ffn_up_exps", "iq4_xs")), has_imatrix=True
        ),
    ),
    OptionCase("output-and-embedding-types", MAIN, "Q4_K_M", QO(output_type="q8_0", embedding_type="q4_0")),
    OptionCase("tied-output-type", TIED, "Q4_K_M", QO(output_type="q5_K")),
    OptionCase(
        "tied-output-and-embedding-types", TIED, "Q4_K_M", QO(output_type="q5_K", embedding_type="q8_0")
    ),
    # Tied embeddings under a float preset: token_embd is not OUTPUT, so the output type never reaches it.
    OptionCase("tied-float-preset-output-type", TIED, "F16", QO(output_type="q8_0")),
    OptionCase(
        "float-preset-ignores-overrides", MAIN, "F16", QO(output_type="q8_0", tensor_types=(("ffn", "q4_0"),))
    ),
    OptionCase("pure", MAIN, "Q4_K_M", QO(pure=True)),
    OptionCase("pure-with-output-type", MAIN, "Q3_K_S", QO(pure=True, output_type="q6_k")),
    OptionCase("leave-output-tensor", MAIN, "Q4_K_M", QO(leave_output_tensor=True)),
    OptionCase("pure-moe-with-imatrix", PHIMOE, "IQ4_XS", QO(pure=True, has_imatrix=True)),
    # token_embd has no imatrix entry (it is a lookup); IQ2_XXS without one trips GGML_ASSERT.
    OptionCase(
        "pure-iq2_xxs-embedding-without-entry",
        MAIN,
        "IQ2_XXS",
        QO(pure=True, has_imatrix=True),
        llama_outcome="aborts",
    ),
    OptionCase(
        "override-embedding-to-iq2_xxs",
        MAIN,
        "Q4_K_M",
        QO(tensor_types=(("token_embd", "iq2_xxs"),), has_imatrix=True),
        llama_outcome="aborts",
    ),
    # Explicit embedding/output types skip the fallback.  A type that does not fit reaches ggml's Q4_K
    # kernel with rows of 288 (its row check is a plain assert, compiled out), which writes a wrong
    # amount of data; llama.cpp then fails on "quantized data validation failed".
    OptionCase(
        "embedding-type-does-not-fit", ODD_ROWS, "Q8_0", QO(embedding_type="q4_k"), llama_outcome="fails"
    ),
)


def reference_job(oracle: Oracle, case: OptionCase) -> ReferenceJob:
    options = case.options

    def type_value(name: str | None) -> int | None:
        return None if name is None else int(parse_ggml_type(name))

    return oracle.job(
        case.model,
        int(parse_preset(case.preset).ftype),
        options.has_imatrix,
        tt_overrides=tuple((pattern, int(parse_ggml_type(name))) for pattern, name in options.tensor_types),
        output_type=type_value(options.output_type),
        embedding_type=type_value(options.embedding_type),
        pure=options.pure,
        leave_output_tensor=options.leave_output_tensor,
        allow_requantize=options.allow_requantize,
    )


@pytest.fixture(scope="module")
def case_results(oracle: Oracle) -> dict[str, ReferenceResult]:
    results = oracle.run([reference_job(oracle, case) for case in CASES])
    return {case.id: result for case, result in zip(CASES, results, strict=True)}


def _plan_and_quantize_all(oracle: Oracle, case: OptionCase) -> None:
    plan = plan_quantization(tensor_descs(case.model), case.model.facts, case.preset, case.options)
    weights = oracle.imatrix(case.model) if case.options.has_imatrix else {}
    for tensor in plan.tensors:
        if tensor.quantize:
            rows = oracle.model_data(case.model)[tensor.name]
            quantize_rows(rows, tensor.target_type, weights.get(tensor.name))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_option_matches_llama_cpp(
    oracle: Oracle, case_results: dict[str, ReferenceResult], case: OptionCase
) -> None:
    result = case_results[case.id]
    if case.llama_outcome != "same":
        if case.llama_outcome == "aborts":
            assert result.signal == signal.SIGABRT, f"expected llama.cpp to abort:\n{result.log[-2000:]}"
        else:
            assert result.return_code == 1, f"expected llama.cpp to fail:\n{result.log[-2000:]}"
        with pytest.raises(PhiquantError):
            _plan_and_quantize_all(oracle, case)
        return
    plan = plan_quantization(tensor_descs(case.model), case.model.facts, case.preset, case.options)
    layout = reference_layout(result)
    assert_plan_matches_reference(oracle, case.model, plan, layout, case.options.has_imatrix)


def test_override_equal_to_default_shifts_later_attn_v_layers() -> None:
    # Complements the "override-equal-to-default" oracle case: show where the shift lands.  With 8
    # layers use_more_bits picks positions 0, 3, 6, 7; overriding layers 0-2 makes layer 3 position 0.
    overridden = plan_quantization(
        tensor_descs(MAIN),
        MAIN.facts,
        "Q4_K_M",
        QuantOptions(tensor_types=((r"blk\.[0-2]\.attn_qkv", "q4_K"),)),
    )
    qkv = [t.target_type.name for t in overridden.tensors if t.name.endswith("attn_qkv.weight")]
    assert qkv == ["Q4_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K"]


def test_float_preset_notes_that_overrides_are_ignored() -> None:
    options = QuantOptions(tensor_types=(("ffn", "q4_0"),))
    plan = plan_quantization(tensor_descs(MAIN), MAIN.facts, "F16", options)
    assert any("ignored" in note for note in plan.notes)
    assert {t.decision for t in plan.tensors} == {Decision.NOT_QUANTIZABLE, Decision.FLOAT_PRESET}


@pytest.mark.slow
def test_requantizing_matches_llama_cpp_and_needs_permission(oracle: Oracle) -> None:
    (q8_result,) = oracle.run([oracle.job(MAIN, int(LlamaFtype.MOSTLY_Q8_0))])
    q8_path = q8_result.job.output_path
    q8 = reference_layout(q8_result)
    refused, allowed = oracle.run(
        [
            ReferenceJob(q8_path, q8_path + ".refused.gguf", int(LlamaFtype.MOSTLY_Q4_K_M)),
            ReferenceJob(
                q8_path, q8_path + ".q4km.gguf", int(LlamaFtype.MOSTLY_Q4_K_M), allow_requantize=True
            ),
        ]
    )
    descs = [TensorDesc(t.name, t.shape, GGMLType(t.ggml_type)) for t in q8.tensors]
    assert refused.return_code == 1 and "requantizing from type q8_0 is disabled" in refused.log
    with pytest.raises(PhiquantError, match="already Q8_0"):
        plan_quantization(descs, MAIN.facts, "Q4_K_M")

    plan = plan_quantization(descs, MAIN.facts, "Q4_K_M", QuantOptions(allow_requantize=True))
    layout = reference_layout(allowed)
    assert [t.target_type for t in plan.tensors] == [t.ggml_type for t in layout.tensors]
    for tensor in plan.tensors:
        source = q8.raw_bytes(q8.tensor(tensor.name))
        if tensor.quantize:
            values = ggml.dequantize(tensor.source_type, np.array(source), tensor.n_elements)
            ours = quantize_rows(values.reshape(tuple(reversed(tensor.shape))), tensor.target_type).tobytes()
        else:
            ours = source.tobytes()
        assert ours == reference_tensor_bytes(layout, tensor.name), tensor.name


@pytest.mark.slow
def test_nvfp4_preset_bytes_equal_llama_cpp_forced_through_overrides(oracle: Oracle) -> None:
    # llama.cpp has no NVFP4 preset: it refuses the ftype outright ...
    plan = plan_quantization(tensor_descs(MAIN), MAIN.facts, "NVFP4", QuantOptions())
    exact = tuple(
        (f"^{re.escape(t.name)}$", int(t.target_type))
        for t in plan.tensors
        if t.decision is not Decision.NOT_QUANTIZABLE
    )
    refused, forced = oracle.run(
        [
            oracle.job(MAIN, int(LlamaFtype.MOSTLY_NVFP4)),
            # ... so force our plan's type on every tensor and compare the bytes ggml writes.
            oracle.job(MAIN, int(LlamaFtype.MOSTLY_Q8_0), tt_overrides=exact),
        ]
    )
    assert refused.return_code == 1 and "invalid output file type 39" in refused.log
    assert {t.target_type for t in plan.tensors if t.quantize} == {GGMLType.NVFP4, GGMLType.Q6_K}
    assert plan.tensors[0].name == "output.weight" and plan.tensors[0].target_type == GGMLType.Q6_K
    assert_plan_matches_reference(oracle, MAIN, plan, reference_layout(forced), with_imatrix=False)


@pytest.mark.slow
def test_imatrix_kv_overrides_are_written_like_llama_quantize(oracle: Oracle) -> None:
    long_path = "/data/" + "é" * 70 + "/imatrix.gguf"  # 147 bytes: cut at 127, on a character boundary
    overrides = imatrix_kv_overrides(
        long_path, ["wiki.train.raw", "other"], entries_count=42, chunks_count=100
    )
    assert [o.key for o in overrides] == [
        "quantize.imatrix.file",
        "quantize.imatrix.dataset",
        "quantize.imatrix.entries_count",
        "quantize.imatrix.chunks_count",
    ]
    assert len(overrides[0].value.encode()) <= 127 and long_path.startswith(overrides[0].value)
    tagged = tuple((o.key, KV_STR if o.gguf_type == "str" else KV_INT, o.value) for o in overrides)
    (result,) = oracle.run([oracle.job(MAIN, int(LlamaFtype.MOSTLY_Q8_0), kv_overrides=tagged)])
    metadata = {item.key: item for item in reference_layout(result).metadata}
    keys = list(metadata)
    assert keys[-5:] == ["general.file_type"] + [o.key for o in overrides]
    for override in overrides:
        entry = metadata[override.key]
        assert entry.value == override.value
        assert entry.value_type == (8 if override.gguf_type == "str" else 4)  # GGUF string / uint32


def test_imatrix_kv_overrides_follow_llama_quantize_conditions() -> None:
    assert imatrix_kv_overrides("m.imatrix", ["d"], entries_count=0, chunks_count=5) == []
    keys = [o.key for o in imatrix_kv_overrides("m.imatrix", [], entries_count=3, chunks_count=0)]
    assert keys == ["quantize.imatrix.file", "quantize.imatrix.entries_count"]


@pytest.mark.slow
def test_f16_overflow_is_refused_like_llama_cpp(oracle: Oracle, tmp_path) -> None:
    data = oracle.model_data(MAIN)
    huge = {name: values.copy() for name, values in data.items()}
    huge["blk.0.ffn_up.weight"][0, 0] = 1e6
    path = tmp_path / "huge.gguf"
    write_model(MAIN, path, huge)
    (result,) = oracle.run([replace(oracle.job(MAIN, int(LlamaFtype.MOSTLY_F16)), input_path=str(path))])
    assert result.return_code == 1 and "validation failed" in result.log
    with pytest.raises(PhiquantError, match="F16"):
        quantize_rows(huge["blk.0.ffn_up.weight"], GGMLType.F16)


@pytest.mark.slow
def test_non_finite_source_values_are_refused_like_llama_cpp(oracle: Oracle, tmp_path) -> None:
    data = {name: values.copy() for name, values in oracle.model_data(MAIN).items()}
    data["blk.0.ffn_up.weight"][3, 5] = np.nan
    data["output_norm.weight"][0] = np.inf  # a tensor that is only ever copied
    path = tmp_path / "nan.gguf"
    write_model(MAIN, path, data)
    results = oracle.run(
        [
            replace(oracle.job(MAIN, int(ftype)), input_path=str(path))
            for ftype in (LlamaFtype.MOSTLY_Q4_K_M, LlamaFtype.ALL_F32)
        ]
    )
    assert all(r.return_code == 1 and "has invalid data" in r.log for r in results)
    with pytest.raises(PhiquantError, match="blk.0.ffn_up.weight: .*NaN"):
        quantize_rows(data["blk.0.ffn_up.weight"], GGMLType.Q4_K, tensor_name="blk.0.ffn_up.weight")
    with pytest.raises(PhiquantError, match="output_norm.weight: the source data is invalid"):
        check_source_data(GGMLType.F32, data["output_norm.weight"], "output_norm.weight")
    check_source_data(GGMLType.F32, oracle.model_data(MAIN)["output_norm.weight"], "output_norm.weight")


@pytest.mark.slow
def test_tensor_order_matches_llama_cpp_loader_for_awkward_names(oracle: Oracle, tmp_path) -> None:
    names = [
        "blk.10.ffn_down.weight",
        "blk.2.attn_norm.weight",
        "blk.2.Attn.weight",
        "zeta.weight",
        "Alpha.weight",
        "blk.1x.extra.weight",
        "blk.-1.odd.weight",
        "token_embd.weight",
        "blk.9.a.weight",
        "blk.02.lead.weight",
        "blkx.weight",
    ]
    data = {name: np.full((2, 32), 0.5, dtype=np.float32) for name in names}
    model = replace(MAIN, n_layer=12)
    path = tmp_path / "names.gguf"
    write_model(model, path, data)
    job = replace(oracle.job(MAIN, int(LlamaFtype.MOSTLY_Q8_0), pure=True), input_path=str(path))
    (result,) = oracle.run([job])
    descs = [TensorDesc(name, (32, 2), GGMLType.F32) for name in names]
    plan = plan_quantization(descs, model.facts, "Q8_0", QuantOptions(pure=True))
    written = read_gguf(result.job.output_path)
    assert [t.name for t in plan.tensors] == [t.name for t in written.tensors]


# Every type ggml can produce, forced onto the first two layers' tensors: each kernel (with an imatrix) on
# every tensor shape against llama.cpp, and on ODD_ROWS each fallback-table entry through the override path.
OVERRIDE_PATTERN = r"blk\.[01]\."
EVERY_TYPE_CASES = [(model, ggml_type) for model in (MAIN, ODD_ROWS) for ggml_type in QUANTIZE_TARGETS]


@pytest.fixture(scope="module")
def every_type_results(oracle: Oracle) -> dict[tuple[str, GGMLType], ReferenceResult]:
    jobs = [
        oracle.job(
            model,
            int(LlamaFtype.MOSTLY_Q8_0),
            with_imatrix=True,
            tt_overrides=((OVERRIDE_PATTERN, int(ggml_type)),),
        )
        for model, ggml_type in EVERY_TYPE_CASES
    ]
    results = oracle.run(jobs)
    return {
        (model.label, ggml_type): result
        for (model, ggml_type), result in zip(EVERY_TYPE_CASES, results, strict=True)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "ggml_type"),
    EVERY_TYPE_CASES,
    ids=[f"{model.label}-{ggml_type.name}" for model, ggml_type in EVERY_TYPE_CASES],
)
def test_every_type_forced_on_block_tensors_matches_llama_cpp(
    oracle: Oracle,
    every_type_results: dict[tuple[str, GGMLType], ReferenceResult],
    model: SyntheticModel,
    ggml_type: GGMLType,
) -> None:
    result = every_type_results[(model.label, ggml_type)]
    options = QuantOptions(
        tensor_types=((OVERRIDE_PATTERN, ggml_type.name),), has_imatrix=True, allow_fallback=True
    )
    if not result.succeeded:
        assert result.signal is None and "no tensor type fallback is defined" in result.log
        with pytest.raises(PhiquantError, match="defines no fallback"):
            plan_quantization(tensor_descs(model), model.facts, "Q8_0", options)
        return
    plan = plan_quantization(tensor_descs(model), model.facts, "Q8_0", options)
    assert_plan_matches_reference(oracle, model, plan, reference_layout(result), with_imatrix=True)
