"""The GGUF value types of the metadata keys phiquant reads, checked when a file is read.

A crafted file can give any key any type: `tokenizer.ggml.tokens` as a number, `block_count` as a
string.  llama.cpp's loader refuses a known key of the wrong type ("key %s has wrong type",
llama-model-loader.cpp; "invalid gguf type for %s", llama-vocab.cpp), and so does phiquant, in
one place, so no consumer (inspect, quantize planning, the runtime's memory check, the prompt
tokenizer) ever sees a value of a type it did not expect.  Keys not listed here may have any type.
"""

from __future__ import annotations

from gguf import GGUFValueType as T

# A value is (type,) for a scalar or (ARRAY, element type) for an array.
STRING, UINT32, FLOAT32, BOOL = (T.STRING,), (T.UINT32,), (T.FLOAT32,), (T.BOOL,)
STRINGS, UINT32S, INT32S, FLOAT32S = (
    (T.ARRAY, T.STRING),
    (T.ARRAY, T.UINT32),
    (T.ARRAY, T.INT32),
    (T.ARRAY, T.FLOAT32),
)

# key -> the types llama.cpp (or phiquant, for phiquant.* keys) accepts
GENERAL_KEYS: dict[str, tuple[tuple[T, ...], ...]] = {
    "general.architecture": (STRING,),
    "general.name": (STRING,),
    "general.alignment": (UINT32,),
    "general.file_type": (UINT32,),
    "general.quantization_version": (UINT32,),
    "tokenizer.ggml.model": (STRING,),
    "tokenizer.ggml.pre": (STRING,),
    "tokenizer.ggml.tokens": (STRINGS,),
    "tokenizer.ggml.scores": (FLOAT32S, INT32S),
    "tokenizer.ggml.token_type": (INT32S,),
    "tokenizer.ggml.merges": (STRINGS,),
    "tokenizer.ggml.bos_token_id": (UINT32,),
    "tokenizer.ggml.eos_token_id": (UINT32,),
    "tokenizer.ggml.eot_token_id": (UINT32,),
    "tokenizer.ggml.eom_token_id": (UINT32,),
    "tokenizer.ggml.unknown_token_id": (UINT32,),
    "tokenizer.ggml.padding_token_id": (UINT32,),
    "tokenizer.ggml.seperator_token_id": (UINT32,),
    "tokenizer.ggml.add_bos_token": (BOOL,),
    "tokenizer.ggml.add_eos_token": (BOOL,),
    "tokenizer.ggml.add_space_prefix": (BOOL,),
    "tokenizer.chat_template": (STRING,),
    "phiquant.eog_token_ids": (UINT32S,),
    "phiquant.tokenizer.lstrip_token_ids": (UINT32S,),
    "phiquant.tokenizer.rstrip_token_ids": (UINT32S,),
}

# "<arch>.<suffix>" keys.  Head and feed-forward counts may be per-layer arrays (get_key_or_arr).
PER_LAYER = (UINT32, UINT32S, INT32S)
ARCH_KEYS: dict[str, tuple[tuple[T, ...], ...]] = {
    "context_length": (UINT32,),
    "embedding_length": (UINT32,),
    "block_count": (UINT32,),
    "feed_forward_length": PER_LAYER,
    "attention.head_count": PER_LAYER,
    "attention.head_count_kv": PER_LAYER,
    "attention.key_length": (UINT32,),
    "attention.value_length": (UINT32,),
    "attention.sliding_window": (UINT32,),
    "attention.layer_norm_rms_epsilon": (FLOAT32,),
    "rope.dimension_count": (UINT32,),
    "rope.freq_base": (FLOAT32,),
    "rope.scaling.original_context_length": (UINT32,),
    "rope.scaling.attn_factor": (FLOAT32,),
    "expert_count": (UINT32,),
    "expert_used_count": (UINT32,),
}

# llama-hparams.h: LLAMA_MAX_LAYERS.  Per-layer arrays longer than this are refused by llama.cpp,
# and a block_count beyond it would size per-layer tables from a number the file chose.
MAX_LAYERS = 512


def expected_types(key: str, arch: str | None) -> tuple[tuple[T, ...], ...] | None:
    if key in GENERAL_KEYS:
        return GENERAL_KEYS[key]
    if key.startswith("tokenizer.chat_template."):
        return (STRING,)
    if arch is not None and key.startswith(arch + "."):
        return ARCH_KEYS.get(key[len(arch) + 1 :])
    return None


def describe(value_type: tuple[T, ...]) -> str:
    return f"array of {value_type[1].name}" if len(value_type) == 2 else value_type[0].name


def check_key_type(key: str, arch: str | None, value_type: T, sub_type: T | None) -> str | None:
    """None if `key` may have this type, else the problem in words."""
    allowed = expected_types(key, arch)
    actual = (value_type, sub_type) if value_type == T.ARRAY else (value_type,)
    if allowed is None or actual in allowed:
        return None
    return f"metadata {key!r} is {describe(actual)}; llama.cpp expects {' or '.join(map(describe, allowed))}"


def check_layer_count(arch: str, get: dict[str, object]) -> str | None:
    """block_count within llama.cpp's limit, and per-layer arrays one entry per layer."""
    n_layer = get.get(f"{arch}.block_count")
    if isinstance(n_layer, int) and n_layer > MAX_LAYERS:
        return f"{arch}.block_count is {n_layer}; llama.cpp supports at most {MAX_LAYERS} layers"
    for suffix in ("feed_forward_length", "attention.head_count", "attention.head_count_kv"):
        value = get.get(f"{arch}.{suffix}")
        if isinstance(value, list) and len(value) != n_layer:
            return f"{arch}.{suffix} has {len(value)} per-layer entries for {n_layer} layers"
    return None


def validate_known_keys(metadata: dict[str, tuple[object, T, T | None]]) -> str | None:
    """The first problem with the types of the keys phiquant reads, or None."""
    arch_entry = metadata.get("general.architecture")
    arch = arch_entry[0] if arch_entry and isinstance(arch_entry[0], str) else None
    for key, (_, value_type, sub_type) in metadata.items():
        problem = check_key_type(key, arch, value_type, sub_type)
        if problem:
            return problem
    if arch is not None:
        return check_layer_count(arch, {key: entry[0] for key, entry in metadata.items()})
    return None
