"""llama.cpp's per-tensor quantization rules, as pure functions over names, shapes and model facts.

Everything here mirrors `src/llama-quant.cpp` of the llama.cpp vendored by llama-cpp-python 0.3.36
(tensor_get_category, tensor_allows_quantization, tensor_type_fallback, tensor_requires_imatrix and
llama_tensor_get_type_impl).  The C++ keeps the position counters (i_attention_wv, i_ffn_down, ...) in a
mutable struct; here they travel in a frozen `Counters` value that each call returns updated, so the
planner in plan.py threads them through the tensors in llama.cpp's order.

Which checks run in which order matters more than elegance: a branch that fires stops the chain, and
only the branches that the C++ increments in advance the counters.  Comments name the C++ branch.
"""

from __future__ import annotations

import enum
import re

from phiquant.errors import PhiquantError
from phiquant.quant.types import TYPE_INFO, GGMLType, LlamaFtype

T, F = GGMLType, LlamaFtype


class Category(enum.Enum):
    """tensor_category: broad roles that the rules key on, decided by name alone."""

    OUTPUT = "output"
    TOKEN_EMBD = "token_embd"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_Q = "attn_q"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OTHER = "other"


_CATEGORY_BY_NAME = {
    "output.weight": Category.OUTPUT,
    "token_embd.weight": Category.TOKEN_EMBD,
    "per_layer_token_embd.weight": Category.TOKEN_EMBD,
}
# Tried in this order; the first substring found wins (so "attn_qkv.weight" never reads as attn_q).
_CATEGORY_BY_SUBSTRING = (
    ("attn_qkv.weight", Category.ATTENTION_QKV),
    ("attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("attn_v.weight", Category.ATTENTION_V),
    ("attn_k.weight", Category.ATTENTION_K),
    ("attn_q.weight", Category.ATTENTION_Q),
    ("attn_output.weight", Category.ATTENTION_OUTPUT),
    ("ffn_up", Category.FFN_UP),
    ("ffn_gate", Category.FFN_GATE),
    ("ffn_down", Category.FFN_DOWN),
)
# category_is_attn_v: Phi's fused attn_qkv follows the attn_v rules.
ATTN_V_LIKE = frozenset({Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B})


def tensor_category(name: str) -> Category:
    if name in _CATEGORY_BY_NAME:
        return _CATEGORY_BY_NAME[name]
    for substring, category in _CATEGORY_BY_SUBSTRING:
        if substring in name:
            return category
    return Category.OTHER


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size <= 1 do not count, so [n, 1] is 1-D."""
    for index in range(len(shape) - 1, 0, -1):
        if shape[index] > 1:
            return index + 1
    return 1


# tensor_allows_quantization: names containing any of these are copied as they are.
_NEVER_QUANTIZED_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",  # MoE router (Phi-3.5-MoE has one per layer)
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")
_NEVER_QUANTIZED_SUBSTRINGS_BY_ARCH = {
    "glm5-next": (
        "hc_",
        "indexer.attn_q_b",
        "indexer.attn_k",
        "indexer.proj",
        "indexer_compressor_gate",
        "indexer_compressor_ape",
        "ssm_f_a.weight",
        "ssm_f_b.weight",
        "ssm_g_a.weight",
        "ssm_g_b.weight",
        "ssm_beta.weight",
        "attn_kv_a_mqa.weight",
        "attn_k_b.weight",
        "attn_v_b.weight",
    ),
}


def _ends_with_weight(name: str) -> bool:
    # The C++ tests name.rfind("weight") == name.size() - 6 in size_t arithmetic: for a name shorter
    # than 6 characters without "weight" both sides are npos, so such names count as ending in "weight".
    return name.endswith("weight") or (len(name) < 6 and "weight" not in name)


def quantization_blocker(
    name: str, shape: tuple[int, ...], arch: str, quantize_output_tensor: bool = True
) -> str | None:
    """Why llama.cpp copies this tensor instead of quantizing it, or None if it quantizes it."""
    if ggml_n_dims(shape) < 2:
        return "1-D"
    if not _ends_with_weight(name):
        return "not a weight"
    if not quantize_output_tensor and name == "output.weight":
        return "output tensor left unquantized"
    if name in _NEVER_QUANTIZED_NAMES:
        return "position/token-type embedding"
    blocked = _NEVER_QUANTIZED_SUBSTRINGS + _NEVER_QUANTIZED_SUBSTRINGS_BY_ARCH.get(arch, ())
    for substring in blocked:
        if substring in name:
            return f"llama.cpp never quantizes '{substring}' tensors"
    return None


def tensor_allows_quantization(
    name: str, shape: tuple[int, ...], arch: str, quantize_output_tensor: bool = True
) -> bool:
    """Whether llama.cpp would quantize this tensor at all (1-D tensors, norms, routers... are copied)."""
    return quantization_blocker(name, shape, arch, quantize_output_tensor) is None


# tensor_type_fallback: where a row is not a whole number of blocks, demote to a smaller-block type.
_FALLBACK_TYPE = {
    T.IQ1_S: T.IQ4_NL,
    T.IQ1_M: T.IQ4_NL,
    T.IQ2_XXS: T.IQ4_NL,
    T.IQ2_XS: T.IQ4_NL,
    T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL,
    T.IQ3_S: T.IQ4_NL,
    T.IQ4_XS: T.IQ4_NL,
    T.Q2_0: T.Q4_0,
    T.Q2_K: T.Q4_0,
    T.Q3_K: T.Q4_0,
    T.TQ1_0: T.Q4_0,
    T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}


def fits_rows(ggml_type: GGMLType, n_per_row: int) -> bool:
    return n_per_row % TYPE_INFO[ggml_type].block_size == 0


def tensor_type_fallback(name: str, n_per_row: int, target: GGMLType) -> GGMLType:
    """The type llama.cpp substitutes when `target`'s block does not divide the row; `target` if it does.

    Types of 32-element blocks have nowhere smaller to go and end up F16, as does any fallback that
    still does not fit.  Larger-block types without a table entry (Q1_0, NVFP4) make llama.cpp fail.
    """
    if fits_rows(target, n_per_row):
        return target
    if target in _FALLBACK_TYPE:
        substitute = _FALLBACK_TYPE[target]
    elif TYPE_INFO[target].block_size <= 32:
        substitute = target
    else:
        raise PhiquantError(
            f"{name}: rows of {n_per_row} values are not a multiple of {target.name}'s "
            f"block of {TYPE_INFO[target].block_size}, and llama.cpp defines no fallback "
            f"type for {target.name}; choose another type for this tensor"
        )
    return substitute if fits_rows(substitute, n_per_row) else T.F16


_IMATRIX_EXEMPT_NAMES = ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")
_TYPES_NEEDING_IMATRIX = frozenset({T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S})


def tensor_requires_imatrix(name: str, target: GGMLType, ftype: LlamaFtype) -> bool:
    """llama.cpp's rule (stricter than ggml's): very low-bit targets need an imatrix, except for the
    embedding and output tensors; Q2_K needs one only inside a Q2_K_S file."""
    if name in _IMATRIX_EXEMPT_NAMES:
        return False
    if target == T.Q2_K:
        return ftype == F.MOSTLY_Q2_K_S
    return target in _TYPES_NEEDING_IMATRIX


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """First and last eighth of the layers, and every third layer between (C integer division)."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


_LAYER_PREFIX = re.compile(r"blk\.[ \t\n\v\f\r]*([+-]?\d+)")


def layer_from_name(name: str) -> int | None:
    """The N of "blk.N." as sscanf("blk.%d.") reads it (so the trailing dot is not required)."""
    match = _LAYER_PREFIX.match(name)
    return int(match.group(1)) if match else None
