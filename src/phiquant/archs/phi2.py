"""PhiForCausalLM: Phi-1, Phi-1.5, Phi-2; GGUF architecture `phi2`.

The family's quirks, all here: LayerNorm with biases (one per layer, feeding attention and MLP in
parallel), biases on every projection and on the output head, partial rotary embedding (Phi-2: 32 of
80 head dimensions), a GELU (tanh) MLP, and the GPT-2/CodeGen byte-level BPE tokenizer.

Q, K and V stay separate tensors, as in the checkpoint and in llama.cpp's own converter output:
llama.cpp's phi2 loader accepts them or a fused attn_qkv, and the two give identical F32 logits, but
its quantization rules differ (a fused attn_qkv follows the attn_v rules, so Q4_K_M would store all of
Q and K at Q5_K); keeping them split makes our quantized files the ones llama.cpp users know.

Three values llama.cpp's converter gets wrong for fine-tunes are taken from config.json instead:
feed_forward_length (it writes 4 * hidden_size), head_count_kv (it writes head_count) and
rope.freq_base (it writes none, so the runtime assumes 10000).  For Microsoft's checkpoints they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phiquant.archs.common import (
    HParams,
    SourceTensor,
    checkpoint_model_source,
    checkpoint_tensor,
    f32,
    general_metadata,
    model_name,
    tokenizer_metadata,
    u32,
)
from phiquant.checkpoint.directory import Checkpoint
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum, ModelSource
from phiquant.vocab.bpe import BPEVocabulary, is_byte_level_bpe, llama_cpp_safe_name, read_bpe_vocabulary
from phiquant.vocab.special import (
    find_special_tokens,
)

GGUF_ARCH = "phi2"

# transformers' PhiConfig default when config.json has no partial_rotary_factor.
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.5
# Activations llama.cpp's phi2 graph computes (GELU, tanh approximation: LLM_FFN_GELU).
TANH_GELU_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
IGNORED_TENSOR = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class Phi2Shape:
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    tied_embeddings: bool


def read_shape(hp: HParams) -> Phi2Shape:
    n_embd = hp.require_int("hidden_size", "n_embd")
    n_head = hp.require_int("num_attention_heads", "n_head")
    head_dim = hp.get("head_dim") or n_embd // n_head
    # transformers' PhiAttention: rotary_ndims = int(head_dim * partial_rotary_factor).  llama.cpp's
    # converter computes int(factor * n_embd) // n_head, which agrees for every real Phi model.
    n_rot = int(head_dim * partial_rotary_factor(hp))
    if n_rot <= 0 or n_rot % 2 or n_rot > head_dim:
        raise PhiquantError(
            f"partial_rotary_factor gives {n_rot} rotary dimensions of {head_dim}; RoPE needs an even number",
            path=hp.file,
        )
    return Phi2Shape(
        n_vocab=hp.require_int("vocab_size"),
        n_embd=n_embd,
        n_ff=hp.require_int("intermediate_size", "n_inner"),
        n_layer=hp.require_int("num_hidden_layers", "n_layer"),
        n_head=n_head,
        n_head_kv=hp.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        n_rot=n_rot,
        tied_embeddings=bool(hp.get("tie_word_embeddings", default=False)),
    )


def partial_rotary_factor(hp: HParams) -> float:
    rope_parameters = hp.get("rope_parameters") or {}
    factor = rope_parameters.get("partial_rotary_factor") if isinstance(rope_parameters, dict) else None
    return float(factor or hp.get("partial_rotary_factor", default=DEFAULT_PARTIAL_ROTARY_FACTOR))


def rope_theta(hp: HParams) -> float:
    rope_parameters = hp.get("rope_parameters") or {}
    theta = rope_parameters.get("rope_theta") if isinstance(rope_parameters, dict) else None
    return float(theta or hp.get("rope_theta", default=10000.0))


def tensor_map(shape: Phi2Shape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF tensor name -> (GGUF name, expected PyTorch shape); every linear layer and norm has a bias."""
    e, q_rows, kv_rows = shape.n_embd, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    names: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("token_embd.weight", (shape.n_vocab, e)),
        "model.final_layernorm.weight": ("output_norm.weight", (e,)),
        "model.final_layernorm.bias": ("output_norm.bias", (e,)),
        "lm_head.bias": ("output.bias", (shape.n_vocab,)),
    }
    if not shape.tied_embeddings:
        names["lm_head.weight"] = ("output.weight", (shape.n_vocab, e))
    for i in range(shape.n_layer):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        layer = {
            "input_layernorm": ("attn_norm", (e,), (e,)),
            "self_attn.q_proj": ("attn_q", (q_rows, e), (q_rows,)),
            "self_attn.k_proj": ("attn_k", (kv_rows, e), (kv_rows,)),
            "self_attn.v_proj": ("attn_v", (kv_rows, e), (kv_rows,)),
            "self_attn.dense": ("attn_output", (e, q_rows), (e,)),
            "mlp.fc1": ("ffn_up", (shape.n_ff, e), (shape.n_ff,)),
            "mlp.fc2": ("ffn_down", (e, shape.n_ff), (e,)),
        }
        for module, (gguf, weight_shape, bias_shape) in layer.items():
            names[f"{hf}.{module}.weight"] = (f"{blk}.{gguf}.weight", weight_shape)
            names[f"{hf}.{module}.bias"] = (f"{blk}.{gguf}.bias", bias_shape)
    return names


def hyperparameter_metadata(hp: HParams, shape: Phi2Shape) -> list[Metadatum]:
    arch = GGUF_ARCH
    return [
        u32(f"{arch}.context_length", hp.require_int("max_position_embeddings", "n_positions")),
        u32(f"{arch}.embedding_length", shape.n_embd),
        u32(f"{arch}.feed_forward_length", shape.n_ff),
        u32(f"{arch}.block_count", shape.n_layer),
        u32(f"{arch}.attention.head_count", shape.n_head),
        u32(f"{arch}.attention.head_count_kv", shape.n_head_kv),
        # LayerNorm, so the plain epsilon key (phi2's loader requires it), not the RMS one.
        f32(f"{arch}.attention.layer_norm_epsilon", hp.require("layer_norm_eps", "layer_norm_epsilon")),
        u32(f"{arch}.rope.dimension_count", shape.n_rot),
        f32(f"{arch}.rope.freq_base", rope_theta(hp)),
    ]


def refuse_unsupported_variants(hp: HParams, checkpoint: Checkpoint) -> None:
    """Configurations llama.cpp's phi2 graph cannot compute."""
    if hp.get("model_type") == "phi-msft" or any(n.startswith("transformer.h.") for n in checkpoint.tensors):
        raise PhiquantError(
            "this is the pre-2024 MixFormer layout of Phi (model_type phi-msft, transformer.h.* tensors); "
            "download the current revision of the model, which transformers' PhiForCausalLM loads",
            path=checkpoint.path,
        )
    if hp.get("qk_layernorm"):
        raise PhiquantError(
            "qk_layernorm is true: llama.cpp's phi2 graph has no query/key LayerNorm", path=hp.file
        )
    scaling = hp.get("rope_scaling")
    if scaling:
        raise PhiquantError(
            f"rope_scaling {scaling!r}: llama.cpp's phi2 graph applies no RoPE scaling", path=hp.file
        )


def activation_warnings(hp: HParams) -> list[str]:
    activation = hp.get("hidden_act", default="gelu_new")
    if activation in TANH_GELU_ACTIVATIONS:
        return []
    return [
        f"hidden_act is {activation!r}; llama.cpp's phi2 graph computes GELU with the tanh approximation, "
        "so its outputs will differ slightly from the original"
    ]


def check_tensor_names(checkpoint: Checkpoint, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    present = {n for n in checkpoint.tensors if not IGNORED_TENSOR.match(n)}
    missing = sorted(set(expected) - present)
    if missing:
        raise PhiquantError(
            f"missing tensor {missing[0]!r} ({len(missing)} missing) that config.json implies",
            path=checkpoint.path,
        )
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise PhiquantError(
            f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected) for this Phi-2 configuration",
            path=checkpoint.path,
        )


def read_vocabulary(checkpoint: Checkpoint, n_vocab: int) -> BPEVocabulary:
    if not is_byte_level_bpe(checkpoint):
        raise PhiquantError(
            "no byte-level BPE tokenizer.json: Phi-1/1.5/2 use the GPT-2/CodeGen tokenizer, which phiquant "
            "reads from tokenizer.json",
            path=checkpoint.path,
        )
    return read_bpe_vocabulary(checkpoint, n_vocab)


def build(checkpoint: Checkpoint) -> ModelSource:
    hp = HParams(checkpoint.config, checkpoint)
    refuse_unsupported_variants(hp, checkpoint)
    shape = read_shape(hp)
    names = tensor_map(shape)
    check_tensor_names(checkpoint, names)
    config_file = str(hp.file)
    tensors = [
        checkpoint_tensor(checkpoint.tensor(hf), gguf, expected, config_file)
        for hf, (gguf, expected) in names.items()
    ]
    if shape.tied_embeddings:
        # phi2's loader requires output.weight (it is not optional as in phi3): repeat the embedding.
        tensors.append(tied_output(checkpoint, shape, config_file))

    vocabulary = read_vocabulary(checkpoint, shape.n_vocab)
    special = find_special_tokens(checkpoint, vocabulary.token_ids(), shape.n_vocab)
    if special.add_bos is None:
        # The CodeGen tokenizer adds no BOS (its post-processor is ByteLevel); llama.cpp's converter
        # writes add_bos_token = false for this architecture explicitly.
        special.add_bos = vocabulary.post_processor_adds_bos
    n_parameters = sum(entry.n_elements for entry in checkpoint.tensors.values())
    metadata = (
        general_metadata(llama_cpp_safe_name(model_name(checkpoint)), n_parameters)
        + hyperparameter_metadata(hp, shape)
        + tokenizer_metadata(checkpoint, vocabulary, special)
    )
    return checkpoint_model_source(
        checkpoint, GGUF_ARCH, metadata, tensors, special, activation_warnings(hp) + vocabulary.warnings
    )


def tied_output(checkpoint: Checkpoint, shape: Phi2Shape, config_file: str) -> SourceTensor:
    embedding = checkpoint.tensor("model.embed_tokens.weight")
    return checkpoint_tensor(embedding, "output.weight", (shape.n_vocab, shape.n_embd), config_file)
