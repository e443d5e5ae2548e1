"""The rule branches Phi models never reach, against llama.cpp's dry run (types only, no data written).

Phi files prove the rules byte for byte in test_oracle_presets.py, but llama.cpp's mix also has branches
for separate attn_q/k/v, ffn_gate, exactly 8 experts (Mixtral), Falcon and LLaMA-70B.  Porting them
faithfully only counts if they are checked too, so these files reach them: tiny tensors (few rows; only
the row length and expert count matter to the rules) with the hyperparameters that select each branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.quant.plan import ModelFacts, QuantOptions, TensorDesc, plan_quantization
from phiquant.quant.types import PRESETS_BY_NAME, TYPE_INFO, GGMLType, Preset, parse_ggml_type
from tests.quant.conftest import LLAMA_PRESETS, Oracle, assert_types_equal_dry_run
from tests.quant.llama_reference import ReferenceJob, ReferenceResult, dry_run_types


@dataclass(frozen=True)
class ArchModel:
    label: str
    facts: ModelFacts
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # ggml shapes, few rows


def _layers(n_layer: int, per_layer: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"blk.{i}.{name}", shape) for i in range(n_layer) for name, shape in per_layer.items()]


def _llama_dense_70b() -> ArchModel:
    # 80 layers and n_head != n_head_kv make llama.cpp call it LLM_TYPE_70B; GQA 8 >= 4.
    per_layer = {
        "attn_norm.weight": (256,),
        "attn_q.weight": (256, 4),
        "attn_k.weight": (256, 2),
        "attn_v.weight": (256, 2),
        "attn_output.weight": (256, 4),
        "ffn_norm.weight": (256,),
        "ffn_gate.weight": (256, 4),
        "ffn_up.weight": (256, 4),
        "ffn_down.weight": (512, 4),
    }
    shapes = [("token_embd.weight", (256, 8)), ("output_norm.weight", (256,)), ("output.weight", (256, 8))]
    return ArchModel(
        "llama70b", ModelFacts("llama", 80, 8, 1, is_llama_70b=True), tuple(shapes + _layers(80, per_layer))
    )


def _llama_8_experts() -> ArchModel:
    per_layer = {
        "attn_norm.weight": (256,),
        "attn_q.weight": (256, 4),
        "attn_k.weight": (256, 4),
        "attn_v.weight": (256, 4),
        "attn_output.weight": (256, 4),
        "ffn_norm.weight": (256,),
        "ffn_gate_inp.weight": (256, 8),
        "ffn_gate_exps.weight": (256, 2, 8),
        "ffn_up_exps.weight": (256, 2, 8),
        "ffn_down_exps.weight": (512, 2, 8),
    }
    shapes = [
        ("token_embd.weight", (256, 8)),
        ("per_layer_token_embd.weight", (256, 8)),
        ("output_norm.weight", (256,)),
        ("output.weight", (256, 8)),
    ]
    facts = ModelFacts("llama", 16, 8, 8, n_expert=8)
    return ArchModel("mixtral", facts, tuple(shapes + _layers(16, per_layer)))


def _falcon() -> ArchModel:
    per_layer = {
        "attn_norm.weight": (256,),
        "attn_norm.bias": (256,),
        "attn_qkv.weight": (256, 6),
        "attn_output.weight": (256, 4),
        "ffn_up.weight": (256, 4),
        "ffn_down.weight": (512, 4),
    }
    shapes = [("token_embd.weight", (256, 8)), ("output_norm.weight", (256,)), ("output_norm.bias", (256,))]
    return ArchModel("falcon", ModelFacts("falcon", 16, 8, 8), tuple(shapes + _layers(16, per_layer)))


MODELS = (_llama_dense_70b(), _llama_8_experts(), _falcon())


def _write(model: ArchModel, path: Path) -> None:
    arch = model.facts.arch
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_block_count(model.facts.n_layer)
    writer.add_head_count(model.facts.n_head)
    writer.add_head_count_kv(model.facts.n_head_kv)
    writer.add_rope_dimension_count(256 // model.facts.n_head)
    if arch == "falcon":
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-5)
    if model.facts.n_expert:
        writer.add_expert_count(model.facts.n_expert)
        writer.add_expert_used_count(2)
    for name, shape in model.shapes:
        writer.add_tensor(name, np.zeros(tuple(reversed(shape)), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def dry_runs(oracle: Oracle) -> dict[tuple[str, str, bool], ReferenceResult]:
    jobs, keys = [], []
    for model in MODELS:
        path = oracle.directory / f"{model.label}-rules.gguf"
        _write(model, path)
        # Any imatrix array makes llama.cpp's rules take their "has imatrix" branches.
        name, shape = next(item for item in model.shapes if item[0].endswith("attn_output.weight"))
        imatrix_path = oracle.directory / f"{model.label}-imatrix.npz"
        np.savez(imatrix_path, **{name: np.ones(shape[0], dtype=np.float32)})
        for preset in LLAMA_PRESETS:
            for with_imatrix in (False, True):
                jobs.append(
                    ReferenceJob(
                        str(path),
                        str(path) + ".unused",
                        int(preset.ftype),
                        dry_run=True,
                        imatrix_path=str(imatrix_path) if with_imatrix else None,
                    )
                )
                keys.append((model.label, preset.name, with_imatrix))
    return dict(zip(keys, oracle.run(jobs), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("preset", LLAMA_PRESETS, ids=lambda preset: preset.name)
@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.label)
def test_types_equal_llama_cpp_dry_run(
    dry_runs: dict[tuple[str, str, bool], ReferenceResult],
    model: ArchModel,
    preset: Preset,
    with_imatrix: bool,
) -> None:
    result = dry_runs[(model.label, preset.name, with_imatrix)]
    tensors = [TensorDesc(name, shape, GGMLType.F32) for name, shape in model.shapes]
    options = QuantOptions(has_imatrix=with_imatrix, allow_fallback=True)
    if not result.succeeded:
        assert result.signal is None and "no tensor type fallback is defined" in result.log
        with pytest.raises(PhiquantError, match="defines no fallback"):
            plan_quantization(tensors, model.facts, preset, options)
        return
    assert_types_equal_dry_run(result, lambda: plan_quantization(tensors, model.facts, preset, options))


# per_layer_token_embd follows --token-embedding-type unless a --tensor-type pattern names it.
OPTION_CASES = (
    ("embedding-type-reaches-per-layer-table", QuantOptions(embedding_type="q8_0")),
    (
        "override-names-per-layer-table",
        QuantOptions(embedding_type="q8_0", tensor_types=(("per_layer_token_embd", "q4_0"),)),
    ),
    ("override-and-output-type", QuantOptions(output_type="q5_0", tensor_types=(("exps", "q5_1"),))),
)


@pytest.fixture(scope="module")
def option_dry_runs(oracle: Oracle) -> dict[str, ReferenceResult]:
    model = MODELS[1]
    path = oracle.directory / "mixtral-options.gguf"
    _write(model, path)

    def type_value(name: str | None) -> int | None:
        return None if name is None else int(parse_ggml_type(name))

    jobs = [
        ReferenceJob(
            str(path),
            str(path) + ".unused",
            int(PRESETS_BY_NAME["Q4_K_M"].ftype),
            dry_run=True,
            output_type=type_value(options.output_type),
            embedding_type=type_value(options.embedding_type),
            tt_overrides=tuple(
                (pattern, int(parse_ggml_type(name))) for pattern, name in options.tensor_types
            ),
        )
        for _, options in OPTION_CASES
    ]
    return {label: result for (label, _), result in zip(OPTION_CASES, oracle.run(jobs), strict=True)}


@pytest.mark.parametrize(("label", "options"), OPTION_CASES, ids=[label for label, _ in OPTION_CASES])
def test_embedding_and_override_precedence_equal_llama_cpp_dry_run(
    option_dry_runs: dict[str, ReferenceResult], label: str, options: QuantOptions
) -> None:
    model = MODELS[1]
    tensors = [TensorDesc(name, shape, GGMLType.F32) for name, shape in model.shapes]
    plan = plan_quantization(tensors, model.facts, "Q4_K_M", options)
    expected = dry_run_types(option_dry_runs[label].log)
    assert [(t.name, TYPE_INFO[t.target_type].ggml_name) for t in plan.tensors] == expected
