"""Phi3ForCausalLM: Phi-3-mini/medium (4k, 128k), Phi-3.5-mini, Phi-4 (14B), Phi-4-mini(-reasoning);
GGUF architecture `phi3`.

Everything specific to this family lives here: the tensor-name map (fused qkv_proj and
gate_up_proj stay fused, as llama.cpp's phi3 graph requires; no output tensor when embeddings are
tied), the hyper-parameter keys (partial rotary, a null sliding window), LongRoPE (factor tensors and
the attention factor), the tokenizer kind (SentencePiece for Phi-3, byte-level BPE for Phi-4), and the
general.name choice that steers llama.cpp's Phi-3 whitespace handling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from phiquant.archs.common import (
    HParams,
    RopeSettings,
    SourceTensor,
    checkpoint_model_source,
    checkpoint_tensor,
    f32,
    float32_tensor,
    general_metadata,
    model_name,
    read_rope_settings,
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
from phiquant.vocab.spm import Vocabulary, read_sentencepiece_vocabulary

GGUF_ARCH = "phi3"

# Tensors transformers keeps in some checkpoints that carry no weights (recomputed at load time).
IGNORED_TENSOR = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class Phi3Shape:
    """The hyper-parameters that fix tensor shapes."""

    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    tied_embeddings: bool

    @property
    def qkv_rows(self) -> int:
        return (self.n_head + 2 * self.n_head_kv) * self.head_dim


def read_shape(hp: HParams) -> Phi3Shape:
    n_embd = hp.require_int("hidden_size", "n_embd")
    n_head = hp.require_int("num_attention_heads", "n_head")
    head_dim = hp.get("head_dim") or n_embd // n_head
    return Phi3Shape(
        n_vocab=hp.require_int("vocab_size"),
        n_embd=n_embd,
        n_ff=hp.require_int("intermediate_size"),
        n_layer=hp.require_int("num_hidden_layers", "n_layer", "num_layers"),
        n_head=n_head,
        n_head_kv=hp.get("num_key_value_heads", "n_head_kv") or n_head,
        head_dim=head_dim,
        tied_embeddings=bool(hp.get("tie_word_embeddings", default=False)),
    )


def tensor_map(shape: Phi3Shape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF tensor name -> (GGUF name, expected PyTorch shape)."""
    names: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("token_embd.weight", (shape.n_vocab, shape.n_embd)),
        "model.norm.weight": ("output_norm.weight", (shape.n_embd,)),
    }
    if not shape.tied_embeddings:
        names["lm_head.weight"] = ("output.weight", (shape.n_vocab, shape.n_embd))
    for i in range(shape.n_layer):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        names.update(
            {
                f"{hf}.input_layernorm.weight": (f"{blk}.attn_norm.weight", (shape.n_embd,)),
                f"{hf}.self_attn.qkv_proj.weight": (f"{blk}.attn_qkv.weight", (shape.qkv_rows, shape.n_embd)),
                f"{hf}.self_attn.o_proj.weight": (
                    f"{blk}.attn_output.weight",
                    (shape.n_embd, shape.n_head * shape.head_dim),
                ),
                f"{hf}.post_attention_layernorm.weight": (f"{blk}.ffn_norm.weight", (shape.n_embd,)),
                # gate and up stay fused: llama.cpp's phi3 graph reads one ffn_up of 2*n_ff rows.
                f"{hf}.mlp.gate_up_proj.weight": (f"{blk}.ffn_up.weight", (2 * shape.n_ff, shape.n_embd)),
                f"{hf}.mlp.down_proj.weight": (f"{blk}.ffn_down.weight", (shape.n_embd, shape.n_ff)),
            }
        )
    return names


def rope_dimension_count(shape: Phi3Shape, rope: RopeSettings) -> int:
    # llama.cpp's converter computes int(factor * n_embd) // n_head; for Phi-4-mini that is 96 of 128.
    return int(rope.partial_rotary_factor * shape.n_embd) // shape.n_head


def longrope_attention_factor(rope: RopeSettings, context_length: int) -> float:
    """The cos/sin scale transformers applies with LongRoPE (modeling_rope_utils longrope).

    An explicit `attention_factor` wins (llama.cpp's converter ignores it; transformers does not).
    """
    if rope.attention_factor is not None:
        return float(rope.attention_factor)
    assert rope.original_max_positions
    factor = rope.factor if rope.factor is not None else context_length / rope.original_max_positions
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(rope.original_max_positions))


def longrope_tensors(rope: RopeSettings, n_rot: int, config_file: str) -> list[SourceTensor]:
    if rope.scaling_type != "longrope" or not rope.long_factor:
        return []
    if not rope.original_max_positions or rope.original_max_positions < 2:
        # Both factor sets and the attention scale are defined relative to the original context
        # (log of it in the scale), so LongRoPE without one has no meaning.
        raise PhiquantError(
            f"LongRoPE needs original_max_position_embeddings of at least 2, not {rope.original_max_positions!r}",
            path=config_file,
        )
    long_factor, short_factor = rope.long_factor, rope.short_factor or ()
    for label, factors in (("long_factor", long_factor), ("short_factor", short_factor)):
        if len(factors) != n_rot // 2:
            raise PhiquantError(
                f"rope_scaling.{label} has {len(factors)} values; the rotary dimension {n_rot} needs {n_rot // 2}",
                path=config_file,
            )
    return [
        float32_tensor("rope_factors_long.weight", long_factor),
        float32_tensor("rope_factors_short.weight", short_factor),
    ]


def hyperparameter_metadata(hp: HParams, shape: Phi3Shape, rope: RopeSettings, arch: str) -> list[Metadatum]:
    context_length = hp.require_int("max_position_embeddings", "n_positions")
    original = rope.original_max_positions or context_length
    sliding_window = hp.get("sliding_window")
    items = [
        u32(f"{arch}.context_length", context_length),
        u32(f"{arch}.rope.scaling.original_context_length", original),
        u32(f"{arch}.embedding_length", shape.n_embd),
        u32(f"{arch}.feed_forward_length", shape.n_ff),
        u32(f"{arch}.block_count", shape.n_layer),
        u32(f"{arch}.attention.head_count", shape.n_head),
        u32(f"{arch}.attention.head_count_kv", shape.n_head_kv),
        f32(f"{arch}.attention.layer_norm_rms_epsilon", hp.require("rms_norm_eps")),
        u32(f"{arch}.rope.dimension_count", rope_dimension_count(shape, rope)),
        f32(f"{arch}.rope.freq_base", rope.theta),
        # A null window (Phi-4) is written as 0, which llama.cpp reads as "no sliding window".
        u32(f"{arch}.attention.sliding_window", sliding_window or 0),
    ]
    if rope.scaling_type == "longrope" and rope.long_factor:
        items.append(f32(f"{arch}.rope.scaling.attn_factor", longrope_attention_factor(rope, context_length)))
    return items


def read_vocabulary(checkpoint: Checkpoint, n_vocab: int) -> Vocabulary | BPEVocabulary:
    """Phi-4 and Phi-4-mini ship a byte-level BPE tokenizer.json; Phi-3 a SentencePiece model.  Decided from
    the files, not from tokenizer_class (missing in some fine-tunes; llama.cpp wants exactly
    "GPT2Tokenizer")."""
    if is_byte_level_bpe(checkpoint):
        return read_bpe_vocabulary(checkpoint, n_vocab)
    return read_sentencepiece_vocabulary(checkpoint, n_vocab)


def llama_cpp_model_name(name: str, vocabulary: Vocabulary | BPEVocabulary) -> str:
    """A general.name that makes llama.cpp strip whitespace after special tokens exactly when the
    Hugging Face tokenizer does.

    llama.cpp sets RSTRIP on every special token (except <unk>, <s>, <|endoftext|>) only when the
    lower-cased general.name contains "phi-3" or "phi3" (llama-vocab.cpp); the GGUF has no per-token
    strip flags.  Current Phi-3 tokenizers mark those tokens rstrip=true, the April 2024 release
    marks them false, so the name must follow the flags, not the marketing name.  A BPE vocabulary
    (Phi-4) cannot take the rule at all: llama.cpp would fail to load it (vocab.bpe.llama_cpp_safe_name);
    there phiquant's own prompt tokenizer applies the recorded flags (Phi-4's tokens lstrip and rstrip).
    """
    if isinstance(vocabulary, BPEVocabulary):
        return llama_cpp_safe_name(name)
    wants_rstrip = _hf_strips_after_special_tokens(vocabulary)
    lowered = name.lower()
    has_marker = "phi-3" in lowered or "phi3" in lowered
    if wants_rstrip and not has_marker:
        return f"{name} (phi-3 tokenizer)"
    if not wants_rstrip and has_marker:
        return re.sub(r"(?i)phi-?3", "Phi 3", name)
    return name


def _hf_strips_after_special_tokens(vocabulary: Vocabulary | BPEVocabulary) -> bool:
    never_stripped = {"<unk>", "<s>", "<|endoftext|>"}
    chat_tokens = [t for t in vocabulary.added if t.special and t.content not in never_stripped]
    return bool(chat_tokens) and sum(t.rstrip for t in chat_tokens) * 2 > len(chat_tokens)


def check_tensor_names(
    checkpoint: Checkpoint, expected: dict[str, tuple[str, tuple[int, ...]]], tied_embeddings: bool = False
) -> None:
    present = {n for n in checkpoint.tensors if not IGNORED_TENSOR.match(n)}
    if tied_embeddings:
        # Some savers write the tied head anyway; it is the embedding matrix again (llama.cpp reuses
        # token_embd when output.weight is absent).
        present.discard("lm_head.weight")
    missing = sorted(set(expected) - present)
    if missing:
        raise PhiquantError(
            f"missing tensor {missing[0]!r} ({len(missing)} missing) that config.json implies",
            path=checkpoint.path,
        )
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise PhiquantError(
            f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected) for this Phi-3 configuration",
            path=checkpoint.path,
        )


def build(checkpoint: Checkpoint) -> ModelSource:
    hp = HParams(checkpoint.config, checkpoint)
    shape = read_shape(hp)
    rope = read_rope_settings(hp)
    names = tensor_map(shape)
    check_tensor_names(checkpoint, names, shape.tied_embeddings)
    config_file = str(hp.file)
    tensors = [
        checkpoint_tensor(checkpoint.tensor(hf), gguf, expected, config_file)
        for hf, (gguf, expected) in names.items()
    ]
    tensors += longrope_tensors(rope, rope_dimension_count(shape, rope), config_file)

    vocabulary = read_vocabulary(checkpoint, shape.n_vocab)
    special = find_special_tokens(checkpoint, vocabulary.token_ids(), shape.n_vocab)
    if isinstance(vocabulary, BPEVocabulary) and special.add_bos is None:
        # Phi-4's tokenizer_config.json has no add_bos_token; its tokenizer adds what the post-processor
        # adds (nothing).  Written explicitly so no runtime default decides.
        special.add_bos = vocabulary.post_processor_adds_bos
    n_parameters = sum(entry.n_elements for entry in checkpoint.tensors.values())
    name = llama_cpp_model_name(model_name(checkpoint), vocabulary)

    metadata = (
        general_metadata(name, n_parameters)
        + hyperparameter_metadata(hp, shape, rope, GGUF_ARCH)
        + tokenizer_metadata(checkpoint, vocabulary, special)
    )
    return checkpoint_model_source(
        checkpoint, GGUF_ARCH, metadata, tensors, special, sliding_window_warnings(hp) + vocabulary.warnings
    )


def sliding_window_warnings(hp: HParams) -> list[str]:
    window, context = hp.get("sliding_window"), hp.get("max_position_embeddings")
    if isinstance(window, int) and isinstance(context, int) and 0 < window < context:
        # llama.cpp disabled Phi-3 sliding-window attention (PR #13676): it attends to the whole
        # context, where transformers masks everything older than the window.
        return [
            f"llama.cpp runs this model with full attention; transformers uses a {window}-token sliding "
            f"window, so outputs past {window} tokens of context differ from the original"
        ]
    return []
