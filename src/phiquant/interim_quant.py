"""INTERIM: the four convert output types until phiquant.quant (ggml kernels and llama.cpp's
per-tensor rules) lands.  To be replaced, not extended."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from phiquant.gguf_io.reader import TYPE_SIZES
from phiquant.model_source import ModelSource
from phiquant.pipeline import n_dims

FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
_NAMES = {v: k for k, v in GGML_TYPES.items()}


def stored_type_name(ggml_type: int) -> str:
    return _NAMES[ggml_type]


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    return (
        n_dims(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
    )


def plan_types(model: ModelSource, type_name: str) -> dict[str, int]:
    target = GGML_TYPES[type_name]
    types = {}
    for t in model.tensors:
        chosen = target if allows_quantization(t.name, t.shape) else t.base_type
        if chosen == 8 and t.shape[0] % 32:
            chosen = 1
        types[t.name] = chosen
    return types


def row_size(ggml_type: int, row_length: int) -> int:
    block, size = TYPE_SIZES[ggml_type]
    return row_length // block * size


def encode_rows(rows: np.ndarray, ggml_type: int, importance: np.ndarray | None) -> np.ndarray:
    if ggml_type == 0:
        return np.ascontiguousarray(rows, dtype=np.float32).view(np.uint8)
    if ggml_type == 1:
        return rows.astype(np.float16).view(np.uint8)
    return np.asarray(gguf_quants.quantize(rows, GGMLQuantizationType(ggml_type))).view(np.uint8)
