"""Plan a quantization: which type every tensor gets, why, and how many bytes it will take.

`plan_quantization` is data in, data out.  Its types equal those of llama.cpp's `llama_model_quantize`
(src/llama-quant.cpp, llama_tensor_get_type and the driver's preliminary loop) for the same file and
options, with three deliberate differences, all of which raise PhiquantError where llama.cpp would quietly
do something the user probably did not mean:

- a type whose block does not divide a tensor's rows is an error naming the tensor, unless
  `allow_fallback` is set; then llama.cpp's substitute is used and recorded in `TensorPlan.fallback_from`;
- a tensor whose type needs an importance matrix, without one, is an error naming the tensor (llama.cpp
  also refuses, but ggml's own requirement for output/embedding tensors would abort the process);
- requantizing an already quantized tensor needs `allow_requantize` (llama.cpp's behaviour too).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from phiquant.errors import PhiquantError
from phiquant.quant.preset_rules import Counters, RuleContext, preset_rule_type
from phiquant.quant.rules import (
    ATTN_V_LIKE,
    Category,
    layer_from_name,
    quantization_blocker,
    tensor_category,
    tensor_requires_imatrix,
    tensor_type_fallback,
)
from phiquant.quant.types import TYPE_INFO, GGMLType, Preset, TypeRole, parse_ggml_type, parse_preset


@dataclass(frozen=True)
class TensorDesc:
    """A tensor as the planner sees it: no data."""

    name: str
    shape: tuple[int, ...]  # ggml ne order: shape[0] is the row length, shape[2] the expert count
    source_type: GGMLType  # type of the data in the source file


@dataclass(frozen=True)
class ModelFacts:
    """The hyperparameters llama.cpp's rules read (from the GGUF metadata)."""

    arch: str  # general.architecture, e.g. "phi3"
    n_layer: int  # <arch>.block_count
    n_head: int  # <arch>.attention.head_count (layer 0)
    n_head_kv: int  # <arch>.attention.head_count_kv (layer 0)
    n_expert: int = 0  # <arch>.expert_count
    is_llama_70b: bool = False  # llama.cpp's LLM_TYPE_70B size class; no Phi model has it

    @property
    def n_gqa(self) -> int:
        """llama_hparams::n_gqa: query heads per KV head, 0 when there are no KV heads."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


@dataclass(frozen=True)
class QuantOptions:
    """What the user asked for beyond the preset.  Patterns are Python regular expressions, searched
    unanchored like llama.cpp's std::regex_search (ECMAScript syntax differs only in exotic features)."""

    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex, type): unanchored search, first match wins
    output_type: str | None = None  # type for output.weight
    embedding_type: str | None = None  # type for token_embd.weight
    pure: bool = False  # preset default everywhere, no mix rules
    has_imatrix: bool = False  # an importance matrix will be passed
    allow_fallback: bool = False  # accept llama.cpp's substitutes for unfit types
    allow_requantize: bool = False  # accept already quantized source tensors
    leave_output_tensor: bool = False  # copy output.weight unquantized


class Decision(enum.Enum):
    """What decided a tensor's type, in llama_tensor_get_type's order of precedence."""

    NOT_QUANTIZABLE = "kept as is"
    EMBEDDING_TYPE = "embedding type option"
    OUTPUT_TYPE = "output type option"
    FLOAT_PRESET = "preset default (float preset: no rules)"
    OVERRIDE = "tensor type override"
    PURE = "preset default (pure)"
    PRESET_RULE = "preset rule"


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_type: GGMLType
    target_type: GGMLType
    decision: Decision
    why: str  # e.g. "attn_v rule", "override 'ffn_down'", "not 2-D"
    fallback_from: GGMLType | None  # the type llama.cpp would have used had the rows fit
    requires_imatrix: bool
    source_bytes: int
    target_bytes: int

    @property
    def n_elements(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def quantize(self) -> bool:
        """False when the bytes are copied unchanged."""
        return self.target_type != self.source_type


@dataclass(frozen=True)
class QuantPlan:
    preset: Preset
    tensors: tuple[TensorPlan, ...]  # in llama.cpp's output order
    notes: tuple[str, ...]  # things the user should know (ignored overrides, ...)

    @property
    def fallbacks(self) -> tuple[TensorPlan, ...]:
        return tuple(tensor for tensor in self.tensors if tensor.fallback_from is not None)

    @property
    def total_bytes(self) -> int:
        return sum(tensor.target_bytes for tensor in self.tensors)

    @property
    def source_bytes(self) -> int:
        return sum(tensor.source_bytes for tensor in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(tensor.n_elements for tensor in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """As llama.cpp reports it: all tensor bytes over all elements, norms included."""
        return 8.0 * self.total_bytes / self.n_elements if self.n_elements else 0.0

    def data_section_bytes(self, alignment: int = 32) -> int:
        """Size of the GGUF data section: every tensor padded to `alignment`, the last one too."""
        return sum(-(-tensor.target_bytes // alignment) * alignment for tensor in self.tensors)


def llama_tensor_order(names: Iterable[str]) -> list[str]:
    """llama.cpp's loader order (weight_name_comparer): tensors outside blocks first, then by block number,
    ties broken bytewise.  Output order and the position counters both follow it."""

    def key(name: str) -> tuple[int, bytes]:
        layer = layer_from_name(name)
        return (-1 if layer is None else layer), name.encode()

    return sorted(names, key=key)


def model_facts_from_metadata(metadata: Mapping[str, object]) -> ModelFacts:
    """ModelFacts from GGUF key/values, read as llama.cpp's load_hparams reads them."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise PhiquantError("the GGUF metadata has no general.architecture")

    def first_int(key: str, default: int | None) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        if isinstance(value, Sequence) and not isinstance(value, str):  # per-layer arrays: layer 0
            value = value[0] if value else default
        if not isinstance(value, int):
            raise PhiquantError(f"the GGUF metadata has no usable {arch}.{key}")
        return value

    n_head = first_int("attention.head_count", 0)
    return ModelFacts(
        arch=arch,
        n_layer=first_int("block_count", None),
        n_head=n_head,
        n_head_kv=first_int("attention.head_count_kv", n_head),
        n_expert=first_int("expert_count", 0),
    )


@dataclass(frozen=True)
class _Resolved:
    """QuantOptions with type names parsed and patterns compiled."""

    overrides: tuple[tuple[re.Pattern[str], GGMLType], ...]
    output_type: GGMLType | None
    embedding_type: GGMLType | None


def _resolve(options: QuantOptions) -> _Resolved:
    overrides = []
    for pattern, type_name in options.tensor_types:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise PhiquantError(
                f"tensor type pattern {pattern!r} is not a valid regular expression: {error}"
            ) from None
        overrides.append((compiled, parse_ggml_type(type_name)))
    return _Resolved(
        overrides=tuple(overrides),
        output_type=None if options.output_type is None else parse_ggml_type(options.output_type),
        embedding_type=None if options.embedding_type is None else parse_ggml_type(options.embedding_type),
    )


def _first_override(name: str, resolved: _Resolved) -> tuple[re.Pattern[str], GGMLType] | None:
    for pattern, ggml_type in resolved.overrides:
        if pattern.search(name):
            return pattern, ggml_type
    return None


def _tensor_bytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    n_rows = 1
    for size in shape[1:]:
        n_rows *= size
    return n_rows * TYPE_INFO[ggml_type].row_bytes(shape[0])


@dataclass(frozen=True)
class _Choice:
    target: GGMLType
    decision: Decision
    why: str
    counters: Counters
    fallback_from: GGMLType | None = None


def _explicit_type(
    tensor: TensorDesc, ggml_type: GGMLType, decision: Decision, counters: Counters
) -> _Choice:
    # llama.cpp returns these before its fallback and does not check them: a type that does not fit the
    # rows makes the K-quant kernels write the wrong amount of data, and the run fails validation.
    block = TYPE_INFO[ggml_type].block_size
    if tensor.shape[0] % block:
        raise PhiquantError(
            f"{tensor.name}: the {decision.value} {ggml_type.name} stores blocks of {block} "
            f"values, but this tensor's rows have {tensor.shape[0]}; choose another type"
        )
    return _Choice(ggml_type, decision, decision.value, counters)


def _choose_type(
    tensor: TensorDesc,
    preset: Preset,
    options: QuantOptions,
    resolved: _Resolved,
    context: RuleContext,
    counters: Counters,
) -> _Choice:
    """llama_tensor_get_type, in its order of precedence."""
    category = tensor_category(tensor.name)
    # per_layer_token_embd follows the embedding type unless an override names it.
    named_per_layer = tensor.name == "per_layer_token_embd.weight" and _first_override(tensor.name, resolved)
    if resolved.embedding_type is not None and category is Category.TOKEN_EMBD and not named_per_layer:
        return _explicit_type(tensor, resolved.embedding_type, Decision.EMBEDDING_TYPE, counters)
    if resolved.output_type is not None and category is Category.OUTPUT:
        return _explicit_type(tensor, resolved.output_type, Decision.OUTPUT_TYPE, counters)
    if not TYPE_INFO[preset.default_type].is_quantized:
        return _Choice(preset.default_type, Decision.FLOAT_PRESET, Decision.FLOAT_PRESET.value, counters)

    override = _first_override(tensor.name, resolved)
    if override is not None:
        pattern, chosen = override
        choice = _Choice(chosen, Decision.OVERRIDE, f"override {pattern.pattern!r}", counters)
    elif options.pure:
        choice = _Choice(preset.default_type, Decision.PURE, Decision.PURE.value, counters)
    else:
        outcome = preset_rule_type(
            tensor.name, tensor.shape, preset.default_type, category, context, counters
        )
        choice = _Choice(outcome.type, Decision.PRESET_RULE, outcome.rule, outcome.counters)

    substitute = tensor_type_fallback(tensor.name, tensor.shape[0], choice.target)
    if substitute == choice.target:
        return choice
    if not options.allow_fallback:
        block = TYPE_INFO[choice.target].block_size
        raise PhiquantError(
            f"{tensor.name}: rows of {tensor.shape[0]} values are not a multiple of {choice.target.name}'s "
            f"block of {block} (chosen by {choice.why}); llama.cpp would silently use {substitute.name} "
            f"instead. Pass --allow-fallback (allow_fallback=True) to accept that, or choose another type for this tensor"
        )
    return _Choice(substitute, choice.decision, choice.why, choice.counters, fallback_from=choice.target)


def _check_feasible(tensor: TensorDesc, choice: _Choice, preset: Preset, options: QuantOptions) -> bool:
    """Refuse what llama.cpp refuses (or would abort on); returns whether an imatrix is required."""
    target, source = choice.target, tensor.source_type
    needs_imatrix = tensor_requires_imatrix(tensor.name, target, preset.ftype)
    ggml_needs_imatrix = TYPE_INFO[target].ggml_requires_imatrix
    if (needs_imatrix or ggml_needs_imatrix) and not options.has_imatrix:
        reason = (
            "Q2_K_S files are only made with one"
            if target == GGMLType.Q2_K
            else "without one the result is garbage"
        )
        raise PhiquantError(
            f"{tensor.name}: {target.name} (chosen by {choice.why}) needs an importance "
            f"matrix: {reason}. Pass an imatrix file or choose a higher-bit type"
        )
    if target != source and TYPE_INFO[source].role is TypeRole.INTEGER:
        raise PhiquantError(f"{tensor.name}: cannot convert {source.name} data to {target.name}")
    if target != source and TYPE_INFO[source].is_quantized and not options.allow_requantize:
        raise PhiquantError(
            f"{tensor.name} is already {source.name}; requantizing it to {target.name} "
            f"compounds the quantization error. Start from an F32/F16/BF16 file, or allow "
            f"requantizing to do it anyway"
        )
    return needs_imatrix or ggml_needs_imatrix


def _rule_context(
    tensors: Sequence[TensorDesc],
    facts: ModelFacts,
    preset: Preset,
    options: QuantOptions,
    resolved: _Resolved,
) -> RuleContext:
    """init_quantize_state_counters: counts over every name in the file, quantizable or not."""
    categories = [tensor_category(tensor.name) for tensor in tensors]
    return RuleContext(
        arch=facts.arch,
        ftype=preset.ftype,
        n_gqa=facts.n_gqa,
        n_expert=facts.n_expert,
        n_layer=facts.n_layer,
        n_attention_wv=sum(category in ATTN_V_LIKE for category in categories),
        has_tied_embeddings=Category.OUTPUT not in categories,
        has_imatrix=options.has_imatrix,
        output_type=resolved.output_type,
        is_llama_70b=facts.is_llama_70b,
    )


def _notes(plans: Sequence[TensorPlan], preset: Preset, options: QuantOptions) -> tuple[str, ...]:
    notes = []
    if options.tensor_types and not TYPE_INFO[preset.default_type].is_quantized:
        notes.append(
            f"tensor type overrides are ignored: {preset.name} is not a quantized preset "
            "(llama.cpp applies them only to quantized presets)"
        )
    for plan in plans:
        if plan.fallback_from is not None:
            notes.append(
                f"{plan.name}: {plan.fallback_from.name} does not fit rows of {plan.shape[0]}; "
                f"using {plan.target_type.name}"
            )
    return tuple(notes)


def plan_quantization(
    tensors: Iterable[TensorDesc],
    facts: ModelFacts,
    preset: Preset | str,
    options: QuantOptions = QuantOptions(),
) -> QuantPlan:
    """Every tensor's target type as llama.cpp would choose it, in llama.cpp's output order."""
    preset = parse_preset(preset) if isinstance(preset, str) else preset
    by_name: dict[str, TensorDesc] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise PhiquantError(f"tensor {tensor.name} appears more than once")
        by_name[tensor.name] = tensor
    ordered = [by_name[name] for name in llama_tensor_order(by_name)]
    resolved = _resolve(options)
    context = _rule_context(ordered, facts, preset, options, resolved)
    counters = Counters()
    plans = []
    for tensor in ordered:
        blocker = quantization_blocker(tensor.name, tensor.shape, facts.arch, not options.leave_output_tensor)
        if blocker is None:
            choice = _choose_type(tensor, preset, options, resolved, context, counters)
            counters = choice.counters
            requires_imatrix = _check_feasible(tensor, choice, preset, options)
        else:
            choice = _Choice(tensor.source_type, Decision.NOT_QUANTIZABLE, blocker, counters)
            requires_imatrix = False
        plans.append(
            TensorPlan(
                name=tensor.name,
                shape=tensor.shape,
                source_type=tensor.source_type,
                target_type=choice.target,
                decision=choice.decision,
                why=choice.why,
                fallback_from=choice.fallback_from,
                requires_imatrix=requires_imatrix,
                source_bytes=_tensor_bytes(tensor.source_type, tensor.shape),
                target_bytes=_tensor_bytes(choice.target, tensor.shape),
            )
        )
    return QuantPlan(preset=preset, tensors=tuple(plans), notes=_notes(plans, preset, options))
