"""Small valid files the fuzzers mutate: a Phi-3 GGUF laid out like phiquant's own conversions.

Mutating a valid file reaches far deeper into a reader than random bytes do: most mutations keep
the magic, the counts and most strings intact and break one field.
"""

from __future__ import annotations

import functools
import struct
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from phiquant.gguf_io import GGUFOutput, Metadatum, TensorInfo
from phiquant.gguf_io.reader import SCALAR_FORMATS

N_EMBD, N_FF, N_HEAD, N_VOCAB = 32, 64, 4, 16
TOKENS = ["<unk>", "<s>", "</s>", "▁a", "▁b", "c", "<0x0A>", "<|end|>", "<|user|>", "<|assistant|>"]
TOKENS += [f"t{i}" for i in range(N_VOCAB - len(TOKENS))]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
)


def tiny_phi3_metadata() -> list[Metadatum]:
    u32, f32, string, array = (
        GGUFValueType.UINT32,
        GGUFValueType.FLOAT32,
        GGUFValueType.STRING,
        GGUFValueType.ARRAY,
    )
    return [
        Metadatum("general.type", "model", string),
        Metadatum("general.name", "Phi 3 Mini 4k Instruct", string),
        Metadatum("phi3.context_length", 4096, u32),
        Metadatum("phi3.rope.scaling.original_context_length", 4096, u32),
        Metadatum("phi3.embedding_length", N_EMBD, u32),
        Metadatum("phi3.feed_forward_length", N_FF, u32),
        Metadatum("phi3.block_count", 1, u32),
        Metadatum("phi3.attention.head_count", N_HEAD, u32),
        Metadatum("phi3.attention.head_count_kv", N_HEAD, u32),
        Metadatum("phi3.attention.layer_norm_rms_epsilon", 1e-5, f32),
        Metadatum("phi3.rope.dimension_count", N_EMBD // N_HEAD, u32),
        Metadatum("phi3.rope.freq_base", 10000.0, f32),
        Metadatum("phi3.attention.sliding_window", 2047, u32),
        Metadatum("general.file_type", 0, u32),
        Metadatum("tokenizer.ggml.model", "llama", string),
        Metadatum("tokenizer.ggml.pre", "default", string),
        Metadatum("tokenizer.ggml.tokens", TOKENS, array, string),
        Metadatum("tokenizer.ggml.scores", [float(-i) for i in range(N_VOCAB)], array, f32),
        Metadatum("tokenizer.ggml.token_type", [2, 3, 3] + [1] * (N_VOCAB - 3), array, GGUFValueType.INT32),
        Metadatum("tokenizer.ggml.bos_token_id", 1, u32),
        Metadatum("tokenizer.ggml.eos_token_id", 2, u32),
        Metadatum("tokenizer.ggml.eot_token_id", 7, u32),
        Metadatum("tokenizer.ggml.add_bos_token", False, GGUFValueType.BOOL),
        Metadatum("tokenizer.chat_template", TEMPLATE, string),
        Metadatum("phiquant.eog_token_ids", [7, 2], array, u32),
    ]


def tiny_phi3_tensors() -> dict[str, tuple[tuple[int, ...], int, np.ndarray]]:
    """GGUF name -> (ggml shape, ggml type, values in numpy order)."""
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": ((N_EMBD, N_VOCAB), 0),
        "blk.0.attn_norm.weight": ((N_EMBD,), 0),
        "blk.0.attn_qkv.weight": ((N_EMBD, 3 * N_EMBD), 1),
        "blk.0.attn_output.weight": ((N_EMBD, N_EMBD), 0),
        "blk.0.ffn_norm.weight": ((N_EMBD,), 0),
        "blk.0.ffn_up.weight": ((N_EMBD, 2 * N_FF), 1),
        "blk.0.ffn_down.weight": ((N_FF, N_EMBD), 0),
        "output_norm.weight": ((N_EMBD,), 0),
        "output.weight": ((N_EMBD, N_VOCAB), 0),
    }
    tensors = {}
    for name, (shape, ggml_type) in shapes.items():
        values = rng.normal(0, 0.1, tuple(reversed(shape))).astype(np.float16 if ggml_type else np.float32)
        tensors[name] = (shape, ggml_type, values)
    return tensors


def write_tiny_phi3_gguf(path: Path) -> Path:
    tensors = tiny_phi3_tensors()
    infos = [TensorInfo(name, shape, t, values.nbytes) for name, (shape, t, values) in tensors.items()]
    with GGUFOutput(path, "phi3", tiny_phi3_metadata(), infos) as out:
        for _, _, values in tensors.values():
            out.write(values)
    return path


@functools.cache
def tiny_phi3_gguf_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        return write_tiny_phi3_gguf(Path(directory) / "tiny.gguf").read_bytes()


def gguf_field_offsets(content: bytes) -> list[int]:
    """Where each count, length, type, dimension and offset field of a valid GGUF starts: the
    places a crafted file lies.  Mutations aimed here reach every check of the reader."""
    offsets = [4, 8, 16]  # version, tensor count, metadata count
    n_tensors, n_kv = struct.unpack_from("<QQ", content, 8)
    pos = 24

    def string() -> None:
        nonlocal pos
        offsets.append(pos)
        (length,) = struct.unpack_from("<Q", content, pos)
        pos += 8 + length

    for _ in range(n_kv):
        string()
        offsets.append(pos)
        (value_type,) = struct.unpack_from("<I", content, pos)
        pos += 4
        count, element_type = 1, value_type
        if value_type == GGUFValueType.ARRAY:
            offsets += [pos, pos + 4]
            element_type, count = struct.unpack_from("<IQ", content, pos)
            pos += 12
        for _ in range(count):
            if element_type == GGUFValueType.STRING:
                string()
            else:
                offsets.append(pos)
                pos += struct.calcsize(SCALAR_FORMATS[GGUFValueType(element_type)])
    for _ in range(n_tensors):
        string()
        offsets.append(pos)
        (n_dims,) = struct.unpack_from("<I", content, pos)
        offsets += [pos + 4 + 8 * i for i in range(n_dims + 1)] + [pos + 4 + 8 * n_dims + 4]
        pos += 4 + 8 * n_dims + 12
    return offsets
