"""An existing GGUF file as a model to (re)write: its metadata and lazily read tensors.

`quantize` accepts an F32/F16/BF16 GGUF as its source, like llama.cpp's llama-quantize; a
quantized source is only read when the user allows requantization (its tensors are dequantized
with ggml's own kernels first, as llama.cpp does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from phiquant.checkpoint.read_ahead import read_ahead
from phiquant.errors import PhiquantError
from phiquant.ggml.types import GGMLType
from phiquant.gguf_io import GGUFFile, GGUFTensor, read_gguf
from phiquant.model_source import ModelSource, SourceTensor

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)

# Keys llama_model_quantize rewrites at the end of the output (llama-quant.cpp); dropping them here
# lets the writer append them last, as llama.cpp does.
REWRITTEN_KEYS = ("general.quantization_version", "general.file_type")
# Keys of split files that never carry over (llama-quant.cpp removes them too).
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
# phiquant writes with GGUF's default alignment; carrying a source's own general.alignment over
# would describe padding the output does not have (a corrupt file).
LAYOUT_KEYS = ("general.alignment",)

Dequantizer = Callable[[np.ndarray, int, int], np.ndarray]  # (raw bytes, ggml type, n elements) -> f32


def _float_rows(raw: np.ndarray, ggml_type: int, row_length: int) -> np.ndarray:
    if ggml_type == GGMLType.F32:
        values = raw.view(np.float32)
    elif ggml_type == GGMLType.F16:
        values = raw.view(np.float16).astype(np.float32)
    else:
        values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return values.reshape(-1, row_length)


def gguf_tensor_source(gguf: GGUFFile, tensor: GGUFTensor, dequantize: Dequantizer | None) -> SourceTensor:
    row_length = tensor.shape[0]
    n_rows = tensor.nbytes and (
        np.prod(tensor.shape[1:], dtype=np.int64).item() if len(tensor.shape) > 1 else 1
    )
    row_bytes = tensor.nbytes // n_rows if n_rows else 0
    file = gguf.file_of(tensor)

    def read_raw(start: int, stop: int) -> np.ndarray:
        if stop == start:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(
            file,
            dtype=np.uint8,
            mode="r",
            offset=tensor.offset + start * row_bytes,
            shape=((stop - start) * row_bytes,),
        )

    def read_rows(start: int, stop: int) -> np.ndarray:
        raw = read_raw(start, stop)
        try:
            if tensor.ggml_type in FLOAT_TYPES:
                return np.array(_float_rows(raw, tensor.ggml_type, row_length))
            assert dequantize is not None
            return dequantize(np.asarray(raw), tensor.ggml_type, (stop - start) * row_length).reshape(
                -1, row_length
            )
        finally:
            del raw

    def hint(start: int, stop: int) -> None:
        read_ahead(file, tensor.offset + start * row_bytes, (stop - start) * row_bytes)

    return SourceTensor(tensor.name, tensor.shape, tensor.ggml_type, read_rows, read_raw, hint)


def load_gguf_source(
    path: str | Path, *, allow_requantize: bool = False, dequantize: Dequantizer | None = None
) -> ModelSource:
    gguf = read_gguf(path)
    quantized = sorted({t.ggml_type for t in gguf.tensors} - set(FLOAT_TYPES))
    if quantized and not allow_requantize:
        raise PhiquantError(
            "this GGUF is already quantized; requantizing loses more quality than quantizing from the "
            "original weights. Quantize from the Hugging Face checkpoint or an F32/F16/BF16 GGUF, or "
            "pass --allow-requantize",
            path=gguf.path,
        )
    if quantized and dequantize is None:
        raise PhiquantError("requantizing needs ggml's dequantizers", path=gguf.path)
    metadata = [m for m in gguf.metadata if m.key not in REWRITTEN_KEYS + SPLIT_KEYS + LAYOUT_KEYS]
    tensors = [gguf_tensor_source(gguf, t, dequantize) for t in gguf.tensors]
    by_bytes: dict[int, int] = {}
    for t in gguf.tensors:
        by_bytes[t.ggml_type] = by_bytes.get(t.ggml_type, 0) + t.nbytes
    stored = max((t for t in by_bytes if t in FLOAT_TYPES), key=lambda t: by_bytes[t], default=GGMLType.F32)
    return ModelSource(
        arch=gguf.arch,
        metadata=metadata,
        tensors=tensors,
        stored_type=stored,
        origin=str(gguf.path),
        source_bytes=sum(t.nbytes for t in gguf.tensors),
    )
