"""PhiMoEForCausalLM (Phi-3.5-MoE-instruct); GGUF architecture `phimoe`.

llama.cpp runs PhiMoE with the Phi-3 graph plus its MoE branch (src/models/phimoe.cpp reuses
llama_model_phi3::graph).  That graph differs from the original model (transformers'
modeling_phimoe.py) in three places, and this module handles each at conversion time:

1. Norms.  PhiMoE's norms are LayerNorms with bias; the Phi-3 graph runs them as RMS norms
   (`build_norm(..., LLM_NORM_RMS)` in src/models/phi3.cpp) times the weight plus the bias.  A
   LayerNorm ignores any constant added to all of its inputs, and every reader of PhiMoE's residual
   stream is a LayerNorm.  So we centre every tensor that *writes* into the stream along the hidden
   dimension: each token-embedding row, o_proj's weight (each column, across the output dimension)
   and its bias, and each expert's w2 (the same way).  The residual stream then has zero mean at
   every position, where RMS norm and LayerNorm agree exactly (same epsilon inside the root), and
   the model computes what it computed before.  This changes the stored weights, not the function.
2. Routing.  transformers routes with sparsemixer (in eval mode: top-1 by logit, then top-2 among
   the others, each weighted by a softmax over the experts within a relative logit distance of the
   chosen one, so both weights are near 1); llama.cpp uses softmax over all experts, top-2,
   renormalised to sum to 1 (`build_moe_ffn(..., norm_w=true, ..., GATING_FUNC_TYPE_SOFTMAX)`),
   and reads no key that could change that.  This difference remains and is reported as a warning.
3. RoPE scale.  transformers multiplies cos/sin by the config's `short_mscale`/`long_mscale`;
   llama.cpp by `rope.scaling.attn_factor`, which llama.cpp's own converter computes as
   sqrt(1 + ln(s)/ln(L)) (1.19 for the real model, whose mscale is 1.2432).  We write the mscale.

Experts are stacked into 3-D tensors (ffn_{gate,up,down}_exps) lazily: the rows of expert e are that
expert's matrix, read from its own checkpoint tensor when the writer asks for them.  Both layouts
transformers writes are read: per-expert `block_sparse_moe.experts.E.w1/w2/w3` (Microsoft's files and
save_pretrained) and stacked `mlp.experts.gate_up_proj/down_proj` (save_original_format=False).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from phiquant.archs.common import (
    HParams,
    RopeSettings,
    check_shape,
    checkpoint_model_source,
    checkpoint_tensor,
    float32_tensor,
    general_metadata,
    model_name,
    read_rope_settings,
    tokenizer_metadata,
    u32,
)
from phiquant.archs.lazy_tensors import (
    RowReader,
    centred_columns,
    centred_rows,
    row_range,
    stacked_experts,
    with_reader,
)
from phiquant.archs.phi3 import (
    Phi3Shape,
    hyperparameter_metadata,
    llama_cpp_model_name,
    longrope_tensors,
    rope_dimension_count,
    sliding_window_warnings,
)
from phiquant.checkpoint.directory import Checkpoint
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum, ModelSource, SourceTensor
from phiquant.vocab.special import (
    find_special_tokens,
)
from phiquant.vocab.spm import read_sentencepiece_vocabulary

GGUF_ARCH = "phimoe"

IGNORED_TENSOR = re.compile(r".*\.rotary_emb\.inv_freq$")

ROUTING_WARNING = (
    "llama.cpp routes PhiMoE tokens with softmax top-2 weights that sum to 1, where the original "
    "model's sparsemixer router gives each chosen expert a weight near 1: outputs differ from "
    "transformers (llama.cpp src/models/phi3.cpp, build_moe_ffn)"
)


@dataclass(frozen=True)
class PhiMoeShape:
    """The hyper-parameters that fix tensor shapes."""

    n_vocab: int
    n_embd: int
    n_ff: int  # one expert's intermediate size
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_expert: int
    n_expert_used: int
    attention_bias: bool
    lm_head_bias: bool

    @property
    def kv_rows(self) -> int:
        return self.n_head_kv * self.head_dim

    def as_phi3(self) -> Phi3Shape:
        return Phi3Shape(
            self.n_vocab,
            self.n_embd,
            self.n_ff,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.head_dim,
            False,
        )


def read_shape(hp: HParams) -> PhiMoeShape:
    n_embd = hp.require_int("hidden_size", "n_embd")
    n_head = hp.require_int("num_attention_heads", "n_head")
    head_dim = hp.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        # src/models/phimoe.cpp creates Q and the output projection as {n_embd, n_embd}.
        raise PhiquantError(
            f"head_dim {head_dim} x {n_head} heads != hidden_size {n_embd}: llama.cpp's phimoe "
            "graph needs the attention width to equal the hidden size, so it cannot run this model",
            path=hp.file,
        )
    n_expert = hp.require_int("num_local_experts", "num_experts")
    n_expert_used = hp.require_int("num_experts_per_tok", "num_experts_per_token")
    if n_expert_used > n_expert:
        raise PhiquantError(
            f"num_experts_per_tok {n_expert_used} exceeds num_local_experts {n_expert}", path=hp.file
        )
    return PhiMoeShape(
        n_vocab=hp.require_int("vocab_size"),
        n_embd=n_embd,
        n_ff=hp.require_int("intermediate_size"),
        n_layer=hp.require_int("num_hidden_layers", "n_layer", "num_layers"),
        n_head=n_head,
        n_head_kv=hp.get("num_key_value_heads", "n_head_kv") or n_head,
        head_dim=head_dim,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        # transformers' PhimoeConfig defaults both to false; the real config sets both true.
        attention_bias=bool(hp.get("attention_bias", default=False)),
        lm_head_bias=bool(hp.get("lm_head_bias", default=False)),
    )


# ---- tensor names ------------------------------------------------------------------------------------


def dense_tensor_map(shape: PhiMoeShape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF name -> (GGUF name, expected PyTorch shape) for everything but the experts and router."""
    embd, vocab = shape.n_embd, shape.n_vocab
    names: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("token_embd.weight", (vocab, embd)),
        "model.norm.weight": ("output_norm.weight", (embd,)),
        "model.norm.bias": ("output_norm.bias", (embd,)),
        "lm_head.weight": ("output.weight", (vocab, embd)),
    }
    if shape.lm_head_bias:
        names["lm_head.bias"] = ("output.bias", (vocab,))
    for i in range(shape.n_layer):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        names[f"{hf}.input_layernorm.weight"] = (f"{blk}.attn_norm.weight", (embd,))
        names[f"{hf}.input_layernorm.bias"] = (f"{blk}.attn_norm.bias", (embd,))
        names[f"{hf}.post_attention_layernorm.weight"] = (f"{blk}.ffn_norm.weight", (embd,))
        names[f"{hf}.post_attention_layernorm.bias"] = (f"{blk}.ffn_norm.bias", (embd,))
        names[f"{hf}.self_attn.o_proj.weight"] = (f"{blk}.attn_output.weight", (embd, embd))
        for proj, rows in (("q", embd), ("k", shape.kv_rows), ("v", shape.kv_rows)):
            names[f"{hf}.self_attn.{proj}_proj.weight"] = (f"{blk}.attn_{proj}.weight", (rows, embd))
            if shape.attention_bias:
                names[f"{hf}.self_attn.{proj}_proj.bias"] = (f"{blk}.attn_{proj}.bias", (rows,))
        if shape.attention_bias:
            names[f"{hf}.self_attn.o_proj.bias"] = (f"{blk}.attn_output.bias", (embd,))
    return names


def uses_stacked_experts(checkpoint: Checkpoint) -> bool:
    """transformers 5 keeps experts stacked in memory and writes them so when it cannot convert back."""
    return "model.layers.0.mlp.experts.gate_up_proj" in checkpoint.tensors


def expert_tensor_names(shape: PhiMoeShape, stacked: bool) -> set[str]:
    names = set()
    for i in range(shape.n_layer):
        if stacked:
            prefix = f"model.layers.{i}.mlp"
            names |= {
                f"{prefix}.router.weight",
                f"{prefix}.experts.gate_up_proj",
                f"{prefix}.experts.down_proj",
            }
            continue
        prefix = f"model.layers.{i}.block_sparse_moe"
        names.add(f"{prefix}.gate.weight")
        names |= {
            f"{prefix}.experts.{e}.{w}.weight" for e in range(shape.n_expert) for w in ("w1", "w2", "w3")
        }
    return names


def check_tensor_names(checkpoint: Checkpoint, expected: set[str]) -> None:
    present = {n for n in checkpoint.tensors if not IGNORED_TENSOR.match(n)}
    missing = sorted(expected - present)
    if missing:
        raise PhiquantError(
            f"missing tensor {missing[0]!r} ({len(missing)} missing) that config.json implies",
            path=checkpoint.path,
        )
    unexpected = sorted(present - expected)
    if unexpected:
        raise PhiquantError(
            f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected) for this PhiMoE configuration",
            path=checkpoint.path,
        )


# ---- experts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerExperts:
    router: SourceTensor
    gate: list[RowReader]  # w1 of each expert: [n_ff, n_embd]
    up: list[RowReader]  # w3: [n_ff, n_embd]
    down: list[RowReader]  # w2: [n_embd, n_ff]


def per_expert_layer(
    checkpoint: Checkpoint, shape: PhiMoeShape, layer: int, config_file: str
) -> LayerExperts:
    prefix = f"model.layers.{layer}.block_sparse_moe"
    readers: dict[str, list[RowReader]] = {"w1": [], "w2": [], "w3": []}
    expected = {
        "w1": (shape.n_ff, shape.n_embd),
        "w2": (shape.n_embd, shape.n_ff),
        "w3": (shape.n_ff, shape.n_embd),
    }
    for expert in range(shape.n_expert):
        for weight in ("w1", "w2", "w3"):
            entry = checkpoint.tensor(f"{prefix}.experts.{expert}.{weight}.weight")
            check_shape(entry, expected[weight], config_file)
            readers[weight].append(entry.read)
    router = checkpoint_tensor(
        checkpoint.tensor(f"{prefix}.gate.weight"),
        f"blk.{layer}.ffn_gate_inp.weight",
        (shape.n_expert, shape.n_embd),
        config_file,
    )
    return LayerExperts(router, readers["w1"], readers["w3"], readers["w2"])


def stacked_layer(checkpoint: Checkpoint, shape: PhiMoeShape, layer: int, config_file: str) -> LayerExperts:
    prefix = f"model.layers.{layer}.mlp"
    gate_up = checkpoint.tensor(f"{prefix}.experts.gate_up_proj")
    check_shape(gate_up, (shape.n_expert, 2 * shape.n_ff, shape.n_embd), config_file)
    down = checkpoint.tensor(f"{prefix}.experts.down_proj")
    check_shape(down, (shape.n_expert, shape.n_embd, shape.n_ff), config_file)
    router = checkpoint_tensor(
        checkpoint.tensor(f"{prefix}.router.weight"),
        f"blk.{layer}.ffn_gate_inp.weight",
        (shape.n_expert, shape.n_embd),
        config_file,
    )
    # gate_up_proj holds, per expert, the gate rows then the up rows (transformers' Concatenate(dim=1)).
    experts = range(shape.n_expert)
    return LayerExperts(
        router,
        gate=[row_range(gate_up.read, e * 2 * shape.n_ff) for e in experts],
        up=[row_range(gate_up.read, e * 2 * shape.n_ff + shape.n_ff) for e in experts],
        down=[row_range(down.read, e * shape.n_embd) for e in experts],
    )


def expert_tensors(layer: int, experts: LayerExperts, shape: PhiMoeShape, centre: bool) -> list[SourceTensor]:
    down = [centred_columns(read, shape.n_embd) for read in experts.down] if centre else experts.down
    blk = f"blk.{layer}"
    return [
        experts.router,
        stacked_experts(f"{blk}.ffn_gate_exps.weight", experts.gate, shape.n_ff, shape.n_embd),
        stacked_experts(f"{blk}.ffn_up_exps.weight", experts.up, shape.n_ff, shape.n_embd),
        stacked_experts(f"{blk}.ffn_down_exps.weight", down, shape.n_embd, shape.n_ff),
    ]


# ---- dense tensors -----------------------------------------------------------------------------------

# GGUF names of the tensors that write into the residual stream, and how each is centred.
ROW_CENTRED = re.compile(r"^(token_embd\.weight|blk\.\d+\.attn_output\.bias)$")
COLUMN_CENTRED = re.compile(r"^blk\.\d+\.attn_output\.weight$")


def centring(tensor: SourceTensor) -> SourceTensor:
    if ROW_CENTRED.match(tensor.name):
        return with_reader(tensor, centred_rows)
    if COLUMN_CENTRED.match(tensor.name):
        return with_reader(tensor, lambda read: centred_columns(read, tensor.n_rows))
    return tensor


def missing_bias_tensors(shape: PhiMoeShape) -> list[SourceTensor]:
    """Zero biases for the ones a config without them leaves out: llama.cpp's phimoe loader requires
    attn_output.bias and output.bias (src/models/phimoe.cpp), and a zero bias is what transformers adds."""
    zeros: list[SourceTensor] = []
    if not shape.attention_bias:
        zeros += [
            float32_tensor(f"blk.{i}.attn_output.bias", [0.0] * shape.n_embd) for i in range(shape.n_layer)
        ]
    if not shape.lm_head_bias:
        zeros.append(float32_tensor("output.bias", [0.0] * shape.n_vocab))
    return zeros


# ---- RoPE --------------------------------------------------------------------------------------------


def rope_settings(hp: HParams) -> tuple[RopeSettings, list[str]]:
    """LongRoPE settings with PhiMoE's mscale as the attention factor (point 3 of the docstring)."""
    rope = read_rope_settings(hp)
    params: Any = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
    short, long = params.get("short_mscale"), params.get("long_mscale")
    if rope.scaling_type != "longrope" or not isinstance(long, int | float):
        return rope, []  # no mscale: transformers falls back to the computed LongRoPE factor too
    warnings = []
    if isinstance(short, int | float) and short != long:
        # llama.cpp has one attention factor for both factor sets; the long one pairs with the
        # long factors, which llama.cpp uses whenever the context exceeds the original length.
        warnings.append(
            f"short_mscale {short} differs from long_mscale {long}; llama.cpp applies one scale, so "
            f"runs with a context of at most {rope.original_max_positions} tokens use {long} too"
        )
    return dataclasses.replace(rope, attention_factor=float(long)), warnings


# ---- the model ---------------------------------------------------------------------------------------


def build(checkpoint: Checkpoint, *, centre_residual_writers: bool = True) -> ModelSource:
    hp = HParams(checkpoint.config, checkpoint)
    shape = read_shape(hp)
    rope, rope_warnings = rope_settings(hp)
    config_file = str(hp.file)
    dense = dense_tensor_map(shape)
    stacked = uses_stacked_experts(checkpoint)
    check_tensor_names(checkpoint, set(dense) | expert_tensor_names(shape, stacked))

    tensors = [
        checkpoint_tensor(checkpoint.tensor(hf), gguf, expected, config_file)
        for hf, (gguf, expected) in dense.items()
    ]
    tensors += missing_bias_tensors(shape)
    if centre_residual_writers:
        tensors = [centring(t) for t in tensors]
    read_layer = stacked_layer if stacked else per_expert_layer
    for layer in range(shape.n_layer):
        experts = read_layer(checkpoint, shape, layer, config_file)
        tensors += expert_tensors(layer, experts, shape, centre_residual_writers)
    tensors += longrope_tensors(rope, rope_dimension_count(shape.as_phi3(), rope), config_file)

    vocabulary = read_sentencepiece_vocabulary(checkpoint, shape.n_vocab)
    special = find_special_tokens(checkpoint, vocabulary.token_ids(), shape.n_vocab)
    n_parameters = sum(entry.n_elements for entry in checkpoint.tensors.values())
    name = llama_cpp_model_name(model_name(checkpoint), vocabulary)
    metadata: list[Metadatum] = (
        general_metadata(name, n_parameters)
        + hyperparameter_metadata(hp, shape.as_phi3(), rope, GGUF_ARCH)
        + [
            u32(f"{GGUF_ARCH}.expert_used_count", shape.n_expert_used),
            u32(f"{GGUF_ARCH}.expert_count", shape.n_expert),
        ]
        + tokenizer_metadata(checkpoint, vocabulary, special)
    )
    return checkpoint_model_source(
        checkpoint,
        GGUF_ARCH,
        metadata,
        tensors,
        special,
        [ROUTING_WARNING, *rope_warnings, *sliding_window_warnings(hp), *vocabulary.warnings],
    )
