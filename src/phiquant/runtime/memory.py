"""How much memory a context needs, what the machine has, and how many layers fit on a GPU.

Decided from GGUF metadata before llama.cpp allocates anything, so an impossible request is refused
with a number instead of a crash or a swap storm.  Phi-3-mini has no grouped-query attention (32 KV
heads of 96 dims in 32 layers): its F16 KV cache takes 384 KiB per token, 48 GiB at 128k tokens
(gpustack/gpustack#33).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile

# llama.cpp rounds every context up to a multiple of 256 cells (llama-context.cpp, GGML_PAD(n_ctx, 256)).
CONTEXT_PADDING = 256
KV_BYTES_PER_VALUE = {"f16": 2, "bf16": 2, "f32": 4}
# GPU memory left for llama.cpp's compute buffers and the driver, on top of the estimate below.
GPU_RESERVE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters that size a context, as llama.cpp reads them from the GGUF."""

    arch: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    n_vocab: int
    long_rope_original_context: int | None = None  # set for LongRoPE models (Phi-3 128k, Phi-3.5)

    @classmethod
    def from_metadata(cls, get: Callable[[str], Any], tensor_names: Sequence[str] = ()) -> ModelShape:
        arch = get("general.architecture")
        if not isinstance(arch, str):
            raise PhiquantError("GGUF metadata has no general.architecture")

        def number(key: str, default: int | None = None) -> int:
            value = get(f"{arch}.{key}")
            if value is None and default is not None:
                return default
            if not isinstance(value, int) or value <= 0:
                raise PhiquantError(f"GGUF metadata {arch}.{key} is {value!r}; expected a positive integer")
            return value

        n_layer, n_embd, n_head = (
            number("block_count"),
            number("embedding_length"),
            number("attention.head_count"),
        )
        head_count_kv = get(f"{arch}.attention.head_count_kv")
        if isinstance(head_count_kv, list):
            n_head_kv = tuple(int(h) for h in head_count_kv)
        else:
            n_head_kv = (number("attention.head_count_kv", n_head),) * n_layer
        has_long_factors = any(name.endswith("rope_factors_long.weight") for name in tensor_names)
        original = get(f"{arch}.rope.scaling.original_context_length")
        tokens = get("tokenizer.ggml.tokens")
        return cls(
            arch=arch,
            n_layer=n_layer,
            n_ctx_train=number("context_length"),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            key_length=number("attention.key_length", n_embd // n_head),
            value_length=number("attention.value_length", n_embd // n_head),
            n_vocab=len(tokens) if isinstance(tokens, list) else 0,
            long_rope_original_context=original if has_long_factors and isinstance(original, int) else None,
        )

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelShape:
        return cls.from_metadata(gguf.get, [t.name for t in gguf.tensors])


def format_memory(n: int) -> str:
    """Bytes in binary units, as memory is sold and as llama.cpp logs it (MiB, GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def padded_context(n_ctx: int) -> int:
    return -(-n_ctx // CONTEXT_PADDING) * CONTEXT_PADDING


def kv_cache_bytes_per_layer(shape: ModelShape, n_ctx: int, cache_type: str = "f16") -> list[int]:
    """K and V bytes of each layer for a context of `n_ctx` tokens (llama-kv-cache.cpp sizes)."""
    cells = padded_context(n_ctx)
    per_value = KV_BYTES_PER_VALUE[cache_type]
    return [cells * heads * (shape.key_length + shape.value_length) * per_value for heads in shape.n_head_kv]


def kv_cache_bytes(shape: ModelShape, n_ctx: int, cache_type: str = "f16") -> int:
    return sum(kv_cache_bytes_per_layer(shape, n_ctx, cache_type))


def default_context_size(shape: ModelShape) -> int:
    """The context phiquant allocates when --ctx is not given.

    LongRoPE models get their original context: llama.cpp picks the long RoPE factors from the
    allocated context, not the prompt, so a larger one degrades every short prompt
    (ggml-org/llama.cpp#8995, #24823).  Other models get their training context."""
    if shape.long_rope_original_context:
        return max(CONTEXT_PADDING, shape.long_rope_original_context // CONTEXT_PADDING * CONTEXT_PADDING)
    return shape.n_ctx_train


def context_warnings(shape: ModelShape, n_ctx: int) -> list[str]:
    original = shape.long_rope_original_context
    if original and padded_context(n_ctx) > original:
        return [
            f"--ctx {n_ctx} is above this model's original context of {original} tokens: llama.cpp then "
            "uses the long-context RoPE factors for every prompt, which lowers quality on short ones "
            "(ggml-org/llama.cpp#8995); use it only for prompts that need it"
        ]
    return []


def check_context_size(shape: ModelShape, n_ctx: int) -> None:
    if n_ctx < 1:
        raise PhiquantError(f"--ctx must be at least 1, not {n_ctx}")
    if n_ctx > shape.n_ctx_train:
        raise PhiquantError(
            f"--ctx {n_ctx} is larger than the {shape.n_ctx_train} tokens this model was trained for"
        )


def available_memory_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, lowered by a cgroup (container) limit."""
    available = _meminfo_available()
    limit = _cgroup_headroom()
    candidates = [v for v in (available, limit) if v is not None]
    return min(candidates) if candidates else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def check_kv_cache_fits(
    shape: ModelShape,
    n_ctx: int,
    *,
    n_contexts: int = 1,
    available: int | None,
    cache_type: str = "f16",
    where: str = "memory",
) -> None:
    """Refuse a context whose KV cache cannot fit, saying how much it needs and what would fit."""
    if available is None:
        return
    need = kv_cache_bytes(shape, n_ctx, cache_type) * n_contexts
    if need <= available:
        return
    per_token = kv_cache_bytes(shape, CONTEXT_PADDING, cache_type) * n_contexts // CONTEXT_PADDING
    fits = available // per_token // CONTEXT_PADDING * CONTEXT_PADDING
    contexts = f"{n_contexts} contexts of {n_ctx} tokens" if n_contexts > 1 else f"a {n_ctx}-token context"
    heads = shape.n_head_kv[0] if len(set(shape.n_head_kv)) == 1 else max(shape.n_head_kv)
    advice = f"use --ctx {fits} or less" if fits >= CONTEXT_PADDING else "not even the smallest context fits"
    raise PhiquantError(
        f"the KV cache for {contexts} needs {format_memory(need)} ({cache_type.upper()}, {shape.n_layer} "
        f"layers x {heads} KV heads x {shape.key_length} dims); only {format_memory(available)} of "
        f"{where} is available: {advice}"
    )


def gpu_layer_cost(
    layer_weight_bytes: Sequence[int], output_bytes: int, kv_per_layer: Sequence[int], n_gpu_layers: int
) -> int:
    """GPU bytes for `n_gpu_layers` as llama.cpp places them: the output layer first, then blocks from
    the last one down (llama-model.cpp, i_gpu_start), each with its KV cache (offload_kqv)."""
    if n_gpu_layers <= 0:
        return 0
    n_blocks = min(n_gpu_layers - 1, len(layer_weight_bytes))
    blocks = range(len(layer_weight_bytes) - n_blocks, len(layer_weight_bytes))
    return output_bytes + sum(layer_weight_bytes[i] + kv_per_layer[i] for i in blocks)


def plan_gpu_layers(
    layer_weight_bytes: Sequence[int],
    output_bytes: int,
    kv_per_layer: Sequence[int],
    free_bytes: int,
    reserve_bytes: int,
) -> int:
    """The largest n_gpu_layers (0 to n_layer + 1) whose weights and KV cache fit in free GPU memory."""
    budget = free_bytes - reserve_bytes
    best = 0
    for n in range(1, len(layer_weight_bytes) + 2):
        if gpu_layer_cost(layer_weight_bytes, output_bytes, kv_per_layer, n) > budget:
            break
        best = n
    return best


def compute_reserve_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int) -> int:
    """A margin for llama.cpp's GPU compute buffer: logits of one batch, plus attention scores of one
    batch over the whole context when flash attention is off."""
    logits = n_ubatch * max(shape.n_vocab, 1) * 4
    scores = n_ubatch * padded_context(n_ctx) * shape.n_head * 4
    return GPU_RESERVE_BYTES + logits + scores


def layer_weight_bytes(gguf: GGUFFile, n_layer: int) -> tuple[list[int], int]:
    """Bytes of each block's tensors, and of the output layer (output.weight, or the tied embedding
    llama.cpp duplicates onto the GPU, plus output_norm)."""
    per_layer = [0] * n_layer
    output = 0
    names = {t.name for t in gguf.tensors}
    for tensor in gguf.tensors:
        if tensor.name.startswith("blk."):
            index = tensor.name.split(".")[1]
            if index.isdigit() and int(index) < n_layer:
                per_layer[int(index)] += tensor.nbytes
        elif tensor.name.startswith("output") or (
            tensor.name == "token_embd.weight" and "output.weight" not in names
        ):
            output += tensor.nbytes
    return per_layer, output


def default_thread_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
