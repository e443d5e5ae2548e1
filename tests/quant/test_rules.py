"""The pure helpers behind the planner, on cases where llama.cpp's behaviour is easy to get wrong.

The planner as a whole is proven against llama.cpp in test_oracle_*.py; these pin down the pieces (with
the rules as llama.cpp's src/llama-quant.cpp writes them) so that a regression points at the helper
that broke.
"""

from __future__ import annotations

import pytest

from phiquant.errors import PhiquantError
from phiquant.quant.plan import ModelFacts, QuantOptions, TensorDesc, llama_tensor_order, plan_quantization
from phiquant.quant.rules import (
    Category,
    ggml_n_dims,
    layer_from_name,
    tensor_allows_quantization,
    tensor_category,
    tensor_requires_imatrix,
    tensor_type_fallback,
    use_more_bits,
)
from phiquant.quant.types import GGMLType, LlamaFtype

T = GGMLType


def test_use_more_bits_layers_for_8_and_32_layers() -> None:
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0,
        1,
        2,
        3,
        6,
        9,
        12,
        15,
        18,
        21,
        24,
        27,
        28,
        29,
        30,
        31,
    ]


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("blk.12.attn_qkv.weight", 12),
        ("blk.1x.weight", 1),
        ("blk. 7.x", 7),
        ("blk.-1.x", -1),
        ("blk.+3.x", 3),
        ("blkx.weight", None),
        ("output.weight", None),
        ("xblk.1.weight", None),
    ],
)
def test_layer_from_name_reads_like_sscanf(name: str, layer: int | None) -> None:
    assert layer_from_name(name) == layer


def test_tensor_order_puts_non_block_tensors_first_then_blocks_numerically() -> None:
    names = ["blk.10.a", "token_embd.weight", "blk.2.b", "blk.2.a", "output.weight", "Zed", "blk.1x"]
    assert llama_tensor_order(names) == [
        "Zed",
        "output.weight",
        "token_embd.weight",
        "blk.1x",
        "blk.2.a",
        "blk.2.b",
        "blk.10.a",
    ]


@pytest.mark.parametrize(
    ("shape", "dims"), [((5,), 1), ((5, 1), 1), ((5, 3), 2), ((5, 1, 4), 3), ((5, 3, 1, 1), 2)]
)
def test_n_dims_ignores_trailing_ones(shape: tuple[int, ...], dims: int) -> None:
    assert ggml_n_dims(shape) == dims


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("blk.0.attn_qkv.weight", Category.ATTENTION_QKV),
        ("blk.0.attn_q.weight", Category.ATTENTION_Q),
        ("blk.0.ffn_gate_exps.weight", Category.FFN_GATE),
        ("blk.0.ffn_up_exps.weight", Category.FFN_UP),
        ("blk.0.attn_k.bias", Category.OTHER),
        ("per_layer_token_embd.weight", Category.TOKEN_EMBD),
        ("output.weight", Category.OUTPUT),
        ("blk.0.output.weight", Category.OTHER),
    ],
)
def test_categories_come_from_names(name: str, category: Category) -> None:
    assert tensor_category(name) == category


@pytest.mark.parametrize(
    ("name", "shape", "allowed"),
    [
        ("blk.0.ffn_up.weight", (256, 512), True),
        ("blk.0.ffn_gate_inp.weight", (256, 16), False),  # MoE router
        ("blk.0.attn_norm.weight", (256, 2), False),
        ("blk.0.attn_qkv.bias", (256, 2), False),
        ("rope_factors_long.weight", (48,), False),
        ("blk.0.ffn_up.weight", (256, 1), False),  # [n, 1] is 1-D
        ("position_embd.weight", (256, 512), False),
        ("w", (256, 2), True),  # size_t quirk: short names count as "weight"
    ],
)
def test_which_tensors_llama_cpp_quantizes(name: str, shape: tuple[int, ...], allowed: bool) -> None:
    assert tensor_allows_quantization(name, shape, "phi3") == allowed


def test_leave_output_tensor_keeps_only_output_weight() -> None:
    assert not tensor_allows_quantization("output.weight", (256, 512), "phi3", quantize_output_tensor=False)
    assert tensor_allows_quantization("token_embd.weight", (256, 512), "phi3", quantize_output_tensor=False)


@pytest.mark.parametrize(
    ("target", "n_per_row", "result"),
    [
        (T.Q4_K, 256, T.Q4_K),
        (T.Q4_K, 288, T.Q5_0),
        (T.Q4_K, 200, T.F16),
        (T.Q6_K, 288, T.Q8_0),
        (T.Q8_0, 200, T.F16),
        (T.IQ2_XXS, 288, T.IQ4_NL),
        (T.Q2_0, 288, T.Q4_0),
        (T.MXFP4, 48, T.F16),
    ],
)
def test_fallback_table(target: GGMLType, n_per_row: int, result: GGMLType) -> None:
    assert tensor_type_fallback("t", n_per_row, target) == result


@pytest.mark.parametrize("target", [T.Q1_0, T.NVFP4])
def test_large_block_types_have_no_fallback(target: GGMLType) -> None:
    with pytest.raises(PhiquantError, match="defines no fallback"):
        tensor_type_fallback("blk.0.ffn_down.weight", 288, target)


def test_imatrix_requirement_exempts_embeddings_and_output_and_q2_k_outside_q2_k_s() -> None:
    assert tensor_requires_imatrix("blk.0.ffn_up.weight", T.IQ2_XXS, LlamaFtype.MOSTLY_Q4_K_M)
    assert not tensor_requires_imatrix("output.weight", T.IQ2_XXS, LlamaFtype.MOSTLY_IQ2_XXS)
    assert tensor_requires_imatrix("blk.0.ffn_up.weight", T.Q2_K, LlamaFtype.MOSTLY_Q2_K_S)
    assert not tensor_requires_imatrix("blk.0.ffn_up.weight", T.Q2_K, LlamaFtype.MOSTLY_Q2_K)


def test_moe_rules_read_the_layer_from_the_name_and_reject_bad_names() -> None:
    facts = ModelFacts("phimoe", n_layer=4, n_head=8, n_head_kv=2, n_expert=16)
    bad = [TensorDesc("blk.9.ffn_up_exps.weight", (256, 256, 16), T.F32)]
    with pytest.raises(PhiquantError, match="outside the model's 4 layers"):
        plan_quantization(bad, facts, "IQ3_XS", QuantOptions(has_imatrix=True))
    nameless = [TensorDesc("experts.ffn_down_exps.weight", (256, 256, 16), T.F32)]
    with pytest.raises(PhiquantError, match="which layer"):
        plan_quantization(nameless, facts, "Q4_K_M")


def test_plan_explains_each_decision() -> None:
    tensors = [
        TensorDesc("blk.0.ffn_down.weight", (256, 256), T.F32),
        TensorDesc("output.weight", (256, 64), T.F32),
        TensorDesc("blk.0.ffn_norm.weight", (256,), T.F32),
    ]
    facts = ModelFacts("phi3", n_layer=1, n_head=8, n_head_kv=8)
    plan = plan_quantization(tensors, facts, "Q4_K_M", QuantOptions(tensor_types=(("ffn_down", "q8_0"),)))
    why = {tensor.name: tensor.why for tensor in plan.tensors}
    assert why == {
        "output.weight": "output rule",
        "blk.0.ffn_down.weight": "override 'ffn_down'",
        "blk.0.ffn_norm.weight": "1-D",
    }
    assert plan.total_bytes == 256 * 64 * 210 // 256 + 256 * 34 * 8 + 256 * 4
    assert plan.bits_per_weight == pytest.approx(8 * plan.total_bytes / (256 * 64 + 256 * 256 + 256))


def test_duplicate_tensor_names_are_refused() -> None:
    tensor = TensorDesc("blk.0.ffn_down.weight", (256, 256), T.F32)
    with pytest.raises(PhiquantError, match="more than once"):
        plan_quantization([tensor, tensor], ModelFacts("phi3", 1, 8, 8), "Q8_0")
