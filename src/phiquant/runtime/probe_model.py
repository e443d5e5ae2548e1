"""A tiny phi3 GGUF holding given tensor types, for probing llama.cpp's CPU kernels cheaply.

runtime.loader evaluates a model with llama.cpp's extra buffer types in a child process to find
out whether this CPU survives them.  Probing the user's model itself would mean loading (and,
with repacking, copying) gigabytes twice; this file has one layer per tensor type instead, each
layer's matrices in that type, so the same kernels run in a megabyte-sized model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from phiquant.ggml import kernels as ggml
from phiquant.ggml.types import GGMLType
from phiquant.model_source import Metadatum, ModelSource, SourceTensor
from phiquant.pipeline import OutputPlan, write_gguf_files
from phiquant.quant.quantize import quantize_rows

N_EMBD = 256
N_FF = 512
N_HEAD = 4
N_VOCAB = 512


def _random_tensor(name: str, shape: tuple[int, ...], seed: int, ones: bool = False) -> SourceTensor:
    def read_rows(start: int, stop: int) -> np.ndarray:
        if ones:
            return np.ones((stop - start, shape[0]), dtype=np.float32)
        rng = np.random.default_rng(seed + start)
        return rng.normal(0, 0.05, (stop - start, shape[0])).astype(np.float32)

    return SourceTensor(name, shape, GGMLType.F32, read_rows)


def probe_model_source(n_layer: int) -> ModelSource:
    tensors = [
        _random_tensor("token_embd.weight", (N_EMBD, N_VOCAB), 1),
        _random_tensor("output_norm.weight", (N_EMBD,), 2, ones=True),
        _random_tensor("output.weight", (N_EMBD, N_VOCAB), 3),
    ]
    for i in range(n_layer):
        tensors += [
            _random_tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), 10 * i, ones=True),
            _random_tensor(f"blk.{i}.attn_qkv.weight", (N_EMBD, 3 * N_EMBD), 10 * i + 1),
            _random_tensor(f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD), 10 * i + 2),
            _random_tensor(f"blk.{i}.ffn_norm.weight", (N_EMBD,), 10 * i + 3, ones=True),
            _random_tensor(f"blk.{i}.ffn_up.weight", (N_EMBD, 2 * N_FF), 10 * i + 4),
            _random_tensor(f"blk.{i}.ffn_down.weight", (N_FF, N_EMBD), 10 * i + 5),
        ]
    u32 = GGUFValueType.UINT32
    metadata = [
        Metadatum("general.name", "phiquant kernel probe", GGUFValueType.STRING),
        Metadatum("phi3.context_length", 256, u32),
        Metadatum("phi3.embedding_length", N_EMBD, u32),
        Metadatum("phi3.feed_forward_length", N_FF, u32),
        Metadatum("phi3.block_count", n_layer, u32),
        Metadatum("phi3.attention.head_count", N_HEAD, u32),
        Metadatum("phi3.attention.head_count_kv", N_HEAD, u32),
        Metadatum("phi3.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32),
        Metadatum("phi3.rope.dimension_count", N_EMBD // N_HEAD, u32),
        Metadatum("tokenizer.ggml.model", "llama", GGUFValueType.STRING),
        Metadatum(
            "tokenizer.ggml.tokens",
            [f"<t{i}>" for i in range(N_VOCAB)],
            GGUFValueType.ARRAY,
            GGUFValueType.STRING,
        ),
        Metadatum("tokenizer.ggml.scores", [0.0] * N_VOCAB, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        Metadatum("tokenizer.ggml.token_type", [1] * N_VOCAB, GGUFValueType.ARRAY, GGUFValueType.INT32),
    ]
    return ModelSource("phi3", metadata, tensors, GGMLType.F32, "probe")


def write_probe_model(path: Path, tensor_types: set[int]) -> None:
    """One layer per type; every matrix of layer i (and output/token_embd in the first type) gets
    type i.  Types that need an importance matrix get a uniform one."""
    types = sorted(t for t in tensor_types if ggml.is_quantized(t)) or [GGMLType.F32]
    source = probe_model_source(len(types))
    plan_types: dict[str, int] = {}
    for tensor in source.tensors:
        if len(tensor.shape) == 1:
            plan_types[tensor.name] = GGMLType.F32
        elif tensor.name.startswith("blk."):
            plan_types[tensor.name] = types[int(tensor.name.split(".")[1])]
        else:
            plan_types[tensor.name] = types[0]

    def encode(rows: np.ndarray, ggml_type: int, importance: np.ndarray | None, name: str) -> np.ndarray:
        uniform = (
            np.ones(rows.shape[1], dtype=np.float32) if ggml.quantize_requires_imatrix(ggml_type) else None
        )
        return quantize_rows(rows, ggml_type, uniform, n_threads=1, tensor_name=name)

    write_gguf_files(source, [OutputPlan(path, 0, plan_types)], encode, ggml.row_size)
