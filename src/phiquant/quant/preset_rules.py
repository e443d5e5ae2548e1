"""llama_tensor_get_type_impl: the preset "mix" rules that pick a type per tensor role and layer.

A faithful port of the if/else-if chain in `src/llama-quant.cpp` (llama.cpp vendored by
llama-cpp-python 0.3.36), branch for branch and in the same order.  Simple preset -> type mappings are
tables; branches that also depend on layer position, GQA or expert count are small functions.

The C++ keeps the position counters in a mutable struct.  Here they are a frozen `Counters` value that
each call returns, advanced exactly where the C++ advances them: only inside these rules, so a tensor
decided by an override, by `pure` or by an explicit output/embedding type does not move them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from phiquant.errors import PhiquantError
from phiquant.quant.rules import ATTN_V_LIKE, Category, layer_from_name, use_more_bits
from phiquant.quant.types import TYPE_INFO, GGMLType, LlamaFtype

T, F = GGMLType, LlamaFtype


@dataclass(frozen=True)
class RuleContext:
    """What llama_tensor_get_type_impl reads besides the tensor: fixed for the whole model."""

    arch: str
    ftype: LlamaFtype
    n_gqa: int
    n_expert: int
    n_layer: int  # n_ffn_down = n_ffn_gate = n_ffn_up: <arch>.block_count
    n_attention_wv: int  # attn_v-like tensors among all names in the file
    has_tied_embeddings: bool  # no output.weight in the file
    has_imatrix: bool
    output_type: GGMLType | None  # params->output_tensor_type, which the output rule reads too
    is_llama_70b: bool = False  # llama.cpp's LLM_TYPE_70B; never set for Phi models


@dataclass(frozen=True)
class Counters:
    """The positions the preset rules count in; only the rules themselves advance them."""

    attention_wv: int = 0
    ffn_down: int = 0
    ffn_gate: int = 0
    ffn_up: int = 0


# Presets grouped as llama-quant.cpp tests them.
_VERY_LOW_BIT = frozenset(
    {F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M}
)
_OUTPUT_Q5_K_PRESETS = frozenset(
    {
        F.MOSTLY_IQ2_XXS,
        F.MOSTLY_IQ2_XS,
        F.MOSTLY_IQ3_XXS,
        F.MOSTLY_IQ1_S,
        F.MOSTLY_IQ2_S,
        F.MOSTLY_IQ2_M,
        F.MOSTLY_IQ1_M,
    }
)
_IQ2_S_OR_M = frozenset({F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M})
_IQ1 = frozenset({F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M})
# Untied token embeddings (branch after MXFP4_MOE); other presets keep their default type.
_TOKEN_EMBD_TYPE = {
    F.MOSTLY_IQ2_XXS: T.Q2_K,
    F.MOSTLY_IQ2_XS: T.Q2_K,
    F.MOSTLY_IQ1_S: T.Q2_K,
    F.MOSTLY_IQ1_M: T.Q2_K,
    F.MOSTLY_IQ2_S: T.IQ3_S,
    F.MOSTLY_IQ2_M: T.IQ3_S,
    F.MOSTLY_IQ3_XXS: T.IQ3_S,
    F.MOSTLY_TQ1_0: T.Q4_K,
    F.MOSTLY_TQ2_0: T.Q4_K,
    F.MOSTLY_Q2_0: T.Q4_K,
}
# attn_k / attn_q when the model does not have exactly 8 experts.
_ATTN_K_OR_Q_TYPE = {F.MOSTLY_IQ3_XS: T.IQ3_XXS, F.MOSTLY_IQ3_XXS: T.IQ2_S}
# attn_output for non-Falcon models: with exactly 8 experts these presets get Q5_K ...
_ATTN_OUTPUT_8_EXPERT_Q5_K = frozenset(
    {
        F.MOSTLY_Q2_K,
        F.MOSTLY_IQ3_XS,
        F.MOSTLY_IQ3_XXS,
        F.MOSTLY_Q3_K_S,
        F.MOSTLY_Q3_K_M,
        F.MOSTLY_IQ4_NL,
        F.MOSTLY_Q4_K_S,
        F.MOSTLY_Q4_K_M,
        F.MOSTLY_IQ3_S,
        F.MOSTLY_IQ3_M,
        F.MOSTLY_IQ4_XS,
    }
)
# ... otherwise this table applies.
_ATTN_OUTPUT_TYPE = {
    F.MOSTLY_Q2_K: T.Q3_K,
    F.MOSTLY_IQ3_XXS: T.IQ3_S,
    F.MOSTLY_Q3_K_M: T.Q4_K,
    F.MOSTLY_Q3_K_L: T.Q5_K,
    F.MOSTLY_IQ3_M: T.Q4_K,
}


@dataclass(frozen=True)
class RuleOutcome:
    type: GGMLType
    counters: Counters
    rule: str  # which branch decided, for the plan's explanation


def preset_rule_type(
    name: str,
    shape: tuple[int, ...],
    default_type: GGMLType,
    category: Category,
    context: RuleContext,
    counters: Counters,
) -> RuleOutcome:
    """The type llama_tensor_get_type_impl picks for a quantizable tensor, and the counters after it."""
    ftype = context.ftype

    def decided(new_type: GGMLType, rule: str, after: Counters = counters) -> RuleOutcome:
        return RuleOutcome(new_type, after, rule)

    if (
        context.arch == "glm5-next"
        and default_type not in (T.F32, T.F16, T.BF16)
        and any(part in name for part in ("attn_q_a", "attn_q_b", "nextn.eh_proj"))
    ):
        return decided(T.Q8_0, "glm5-next projections stay at Q8_0")
    if category is Category.OUTPUT or (context.has_tied_embeddings and category is Category.TOKEN_EMBD):
        # Tied embeddings: token_embd doubles as the output matrix, so it gets the output rule.
        return decided(_output_rule(shape[0], default_type, context), "output rule")
    if ftype == F.MOSTLY_MXFP4_MOE:
        return decided(*_mxfp4_moe_rule(shape, category, context))
    if category is Category.TOKEN_EMBD:
        # (The C++ checks token_embedding_type here too, but llama_tensor_get_type returns it earlier.)
        return decided(_TOKEN_EMBD_TYPE.get(ftype, default_type), "token_embd rule")
    if ftype in _VERY_LOW_BIT:
        return _very_low_bit_rule(default_type, category, context, counters)
    if category in ATTN_V_LIKE:
        return _attn_v_rule(default_type, context, counters)
    if category in (Category.ATTENTION_K, Category.ATTENTION_Q):
        if category is Category.ATTENTION_K and context.n_expert == 8:
            return decided(T.Q8_0, "attn_k rule (8 experts)")
        return decided(_ATTN_K_OR_Q_TYPE.get(ftype, default_type), f"{category.value} rule")
    if category is Category.FFN_DOWN:
        return _ffn_down_rule(name, default_type, context, counters)
    if category is Category.ATTENTION_OUTPUT:
        return decided(_attn_output_type(default_type, context), "attn_output rule")
    # The C++ has an ATTENTION_QKV branch here, but attn_qkv is attn_v-like and was taken above: dead code.
    if category in (Category.FFN_GATE, Category.FFN_UP):
        return _ffn_gate_up_rule(name, default_type, category, context, counters)
    return decided(default_type, "preset default")


def _output_rule(n_per_row: int, entering: GGMLType, context: RuleContext) -> GGMLType:
    if context.output_type is not None:
        return context.output_type
    if context.ftype == F.MOSTLY_MXFP4_MOE:
        return T.Q8_0
    if context.arch == "falcon" or n_per_row % TYPE_INFO[entering].block_size:
        return T.Q8_0
    if context.ftype in _OUTPUT_Q5_K_PRESETS:
        return T.Q5_K
    return T.Q6_K if entering != T.Q8_0 else entering


def _mxfp4_moe_rule(shape: tuple[int, ...], category: Category, context: RuleContext) -> tuple[GGMLType, str]:
    # Stacked expert tensors (ne[2] > 1) become MXFP4, everything else Q8_0.  BailingMoE3's MLA
    # projections are 3-D too, so for that arch only the ffn roles count as experts.
    n_matrices = shape[2] if len(shape) > 2 else 1
    is_ffn = category in (Category.FFN_UP, Category.FFN_GATE, Category.FFN_DOWN)
    if n_matrices > 1 and (context.arch != "bailingmoe3" or is_ffn):
        return T.MXFP4, "MXFP4_MOE experts"
    return T.Q8_0, "MXFP4_MOE non-expert"


def _very_low_bit_rule(
    default_type: GGMLType, category: Category, context: RuleContext, counters: Counters
) -> RuleOutcome:
    ftype = context.ftype
    if category in ATTN_V_LIKE:
        if context.n_gqa >= 4 or context.n_expert >= 4:
            new_type = T.Q4_K
        else:
            new_type = T.IQ3_S if ftype in _IQ2_S_OR_M else T.Q2_K
        after = replace(counters, attention_wv=counters.attention_wv + 1)
        return RuleOutcome(new_type, after, "low-bit attn_v rule")
    if context.n_expert == 8 and category is Category.ATTENTION_K:
        return RuleOutcome(T.Q4_K, counters, "low-bit attn_k rule (8 experts)")
    if category is Category.FFN_DOWN:
        # Position from the counter, even for MoE models (unlike the ffn_down rule further down).
        new_type = default_type
        if counters.ffn_down < context.n_layer // 8:
            new_type = T.IQ3_S if ftype in _IQ2_S_OR_M else T.Q2_K
        after = replace(counters, ffn_down=counters.ffn_down + 1)
        return RuleOutcome(new_type, after, "low-bit ffn_down rule")
    if category is Category.ATTENTION_OUTPUT:
        if context.n_expert == 8:
            new_type = T.Q5_K
        elif ftype in _IQ1:
            new_type = T.IQ2_XXS
        elif ftype in _IQ2_S_OR_M:
            new_type = T.IQ3_S
        else:
            new_type = default_type
        return RuleOutcome(new_type, counters, "low-bit attn_output rule")
    return RuleOutcome(default_type, counters, "preset default")


def _attn_v_rule(default_type: GGMLType, context: RuleContext, counters: Counters) -> RuleOutcome:
    ftype, gqa4, position = context.ftype, context.n_gqa >= 4, counters.attention_wv
    new_type = default_type
    if ftype == F.MOSTLY_Q2_K:
        new_type = T.Q4_K if gqa4 else T.Q3_K
    elif ftype == F.MOSTLY_Q2_K_S and gqa4:
        new_type = T.Q4_K
    elif ftype == F.MOSTLY_IQ3_XXS:
        new_type = T.Q4_K if gqa4 else (T.IQ3_XXS if context.has_imatrix else T.IQ3_S)
    elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and gqa4 or ftype == F.MOSTLY_IQ3_M:
        new_type = T.Q4_K
    elif ftype == F.MOSTLY_Q3_K_M:
        new_type = T.Q5_K if position < 2 else T.Q4_K
    elif ftype == F.MOSTLY_Q3_K_L or ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and gqa4:
        new_type = T.Q5_K
    elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(position, context.n_attention_wv):
        new_type = T.Q6_K
    elif ftype == F.MOSTLY_Q4_K_S and position < 4:
        new_type = T.Q5_K
    if context.is_llama_70b and new_type in (T.Q3_K, T.Q4_K):
        new_type = T.Q5_K
    if context.n_expert == 8:
        new_type = T.Q8_0
    return RuleOutcome(new_type, replace(counters, attention_wv=position + 1), "attn_v rule")


def _layer_position(name: str, counter: int, context: RuleContext) -> tuple[int, int]:
    """layer_info: dense models count tensors; MoE models read the layer from the name, because
    llama.cpp once met expert tensors that were not stored layer by layer (Mixtral)."""
    if max(1, context.n_expert) == 1:
        return counter, context.n_layer
    layer = layer_from_name(name)
    if layer is None:
        raise PhiquantError(f"{name}: cannot tell which layer this expert tensor belongs to")
    if not 0 <= layer < context.n_layer:
        raise PhiquantError(f"{name}: layer {layer} is outside the model's {context.n_layer} layers")
    return layer, context.n_layer


def _ffn_down_rule(
    name: str, default_type: GGMLType, context: RuleContext, counters: Counters
) -> RuleOutcome:
    ftype, falcon, imatrix = context.ftype, context.arch == "falcon", context.has_imatrix
    layer, n_layer = _layer_position(name, counters.ffn_down, context)
    first_eighth, more_bits = layer < n_layer // 8, use_more_bits(layer, n_layer)
    new_type = default_type
    if ftype == F.MOSTLY_Q2_K:
        new_type = T.Q3_K
    elif ftype == F.MOSTLY_Q2_K_S:
        if first_eighth:
            new_type = T.Q4_K
    elif ftype == F.MOSTLY_IQ3_XXS and not imatrix:
        new_type = T.Q4_K if first_eighth else T.Q3_K
    elif ftype == F.MOSTLY_Q3_K_M:
        new_type = T.Q5_K if layer < n_layer // 16 else (T.Q4_K if not falcon or more_bits else T.Q3_K)
    elif ftype == F.MOSTLY_IQ3_M and (first_eighth or (context.n_expert == 8 and more_bits)):
        new_type = T.Q4_K
    elif ftype == F.MOSTLY_Q3_K_L:
        new_type = T.Q4_K if falcon else T.Q5_K
    elif ftype == F.MOSTLY_Q4_K_M:
        if falcon:
            new_type = T.Q6_K if layer < n_layer // 16 else (T.Q5_K if more_bits else T.Q4_K)
        elif more_bits:
            new_type = T.Q6_K
    elif first_eighth and ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not imatrix:
        new_type = T.Q5_K
    elif ftype == F.MOSTLY_Q5_K_M and more_bits:
        new_type = T.Q6_K
    elif ftype == F.MOSTLY_Q4_K_S and not falcon and first_eighth:
        new_type = T.Q5_K
    elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and imatrix and first_eighth:
        # Only with an imatrix, so that a run without one reproduces the pre-imatrix files.
        new_type = T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
    return RuleOutcome(new_type, replace(counters, ffn_down=counters.ffn_down + 1), "ffn_down rule")


def _attn_output_type(default_type: GGMLType, context: RuleContext) -> GGMLType:
    if context.arch == "falcon":
        return T.Q4_K if context.ftype == F.MOSTLY_Q3_K_L else default_type
    if context.n_expert == 8:
        return T.Q5_K if context.ftype in _ATTN_OUTPUT_8_EXPERT_Q5_K else default_type
    return _ATTN_OUTPUT_TYPE.get(context.ftype, default_type)


def _ffn_gate_up_rule(
    name: str, default_type: GGMLType, category: Category, context: RuleContext, counters: Counters
) -> RuleOutcome:
    counter = counters.ffn_gate if category is Category.FFN_GATE else counters.ffn_up
    layer, n_layer = _layer_position(name, counter, context)
    new_type = default_type
    if context.ftype == F.MOSTLY_IQ3_XS and n_layer // 8 <= layer < 7 * n_layer // 8:
        new_type = T.IQ3_XXS
    if category is Category.FFN_GATE:
        after = replace(counters, ffn_gate=counter + 1)
    else:
        after = replace(counters, ffn_up=counter + 1)
    return RuleOutcome(new_type, after, f"{category.value} rule")
