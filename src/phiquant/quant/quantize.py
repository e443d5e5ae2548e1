"""Quantize a tensor's rows with ggml's kernels on every core, byte-identical to llama_model_quantize.

Every ggml block type quantizes each row on its own, so how rows are split into chunks cannot change the
bytes; llama.cpp's driver (llama_tensor_quantize_impl in src/llama-quant.cpp) hands chunks of at least
16384 values to its threads and never lets a chunk cross from one expert to the next, because each expert
has its own slice of the importance matrix.  This module does the same with a Python thread pool: the
ctypes calls release the GIL, so the threads really run in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.quant.types import GGMLType, type_info

# llama-quant.cpp: chunks hold at least 32 * 512 values (or one row, if rows are longer).
MIN_CHUNK_VALUES = 32 * 512


@dataclass(frozen=True)
class RowChunk:
    expert: int
    first_row: int  # within the expert
    n_rows: int


def plan_row_chunks(n_experts: int, rows_per_expert: int, n_per_row: int) -> list[RowChunk]:
    """Split rows as llama.cpp does: whole rows, >= MIN_CHUNK_VALUES values, never across experts."""
    rows_per_chunk = -(-MIN_CHUNK_VALUES // n_per_row) if n_per_row > 0 else max(1, rows_per_expert)
    return [
        RowChunk(expert, first, min(rows_per_chunk, rows_per_expert - first))
        for expert in range(n_experts)
        for first in range(0, rows_per_expert, rows_per_chunk)
    ]


def quantize_rows(
    data: np.ndarray,
    ggml_type: int,
    imatrix: np.ndarray | None = None,
    n_threads: int | None = None,
    tensor_name: str | None = None,
    allow_nonfinite: bool = False,
    assume_finite: bool = False,
) -> np.ndarray:
    """Quantize float32 rows to `ggml_type` (any quantization target, F32/F16/BF16 included).

    `data` is (rows, n_per_row) or, for stacked experts, (n_experts, rows_per_expert, n_per_row) in
    numpy order.  `imatrix` has n_per_row weights per expert (flat or (n_experts, n_per_row)), or is None.
    Returns uint8 of shape data.shape[:-1] + (row bytes,): the tensor's bytes as llama.cpp writes them.
    Rows are independent, so a caller short of memory may pass slabs of rows (whole experts for 3-D
    tensors, with their imatrix slices) and concatenate the results.  `tensor_name` prefixes errors.
    `allow_nonfinite` lets NaN/Inf through to float targets (F32/F16/BF16), which can store them;
    block-quantized types cannot, so it never applies to them.  `assume_finite` skips the NaN/Inf
    scan of the input for callers that have already made it (the streaming pipeline does).
    """
    try:
        return _quantize_rows(data, ggml_type, imatrix, n_threads, allow_nonfinite, assume_finite)
    except PhiquantError as error:
        if tensor_name is None:
            raise
        raise PhiquantError(f"{tensor_name}: {error.message}", path=error.path) from None


def _quantize_rows(
    data: np.ndarray,
    ggml_type: int,
    imatrix: np.ndarray | None,
    n_threads: int | None,
    allow_nonfinite: bool,
    assume_finite: bool,
) -> np.ndarray:
    info = type_info(ggml_type)
    experts = _as_experts(data)
    n_experts, rows_per_expert, n_per_row = experts.shape
    weights = _expert_weights(imatrix, n_experts, n_per_row)
    store_nonfinite = allow_nonfinite and not info.is_quantized
    # F32 and BF16 hold any finite float32; F16 overflows past 65504 and block types can go wrong,
    # so their output is validated as llama.cpp validates each chunk.
    validate = not store_nonfinite and info.type not in (GGMLType.F32, GGMLType.BF16)
    if not (store_nonfinite or assume_finite) and not all_finite(experts):
        # llama.cpp's loader refuses such input (check_tensors), and some kernels assert on NaN.
        raise PhiquantError("the tensor contains NaN or infinite values; it cannot be quantized")
    out = np.empty((n_experts, rows_per_expert, ggml.row_size(info.type, n_per_row)), dtype=np.uint8)
    ggml.quantize_init(info.type)

    def run(chunk: RowChunk) -> None:
        rows = slice(chunk.first_row, chunk.first_row + chunk.n_rows)
        expert_weights = None if weights is None else weights[chunk.expert]
        quantized = ggml.quantize_chunk(
            info.type, experts[chunk.expert, rows], expert_weights, out=out[chunk.expert, rows]
        )
        if validate and not ggml.validate_row_data(info.type, quantized):
            raise PhiquantError(
                f"ggml rejected the {info.name} data it produced (values out of range "
                f"for {info.name}, e.g. above 65504 for F16)"
            )
        out[chunk.expert, rows] = quantized

    chunks = plan_row_chunks(n_experts, rows_per_expert, n_per_row)
    workers = max(1, min(n_threads or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        for chunk in chunks:
            run(chunk)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phiquant-quantize") as pool:
            for future in [pool.submit(run, chunk) for chunk in chunks]:
                future.result()
    return out.reshape(data.shape[:-1] + (out.shape[-1],))


def all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite.  A NaN or an infinity makes the sum non-finite, so a finite sum
    settles it in one read without a temporary array; only a non-finite sum (which finite values can
    also give, by overflowing) needs the element-wise check."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(values, axis=None)):
            return True
    return bool(np.isfinite(values).all())


# numpy views of the float source types; BF16 is checked on its raw bits (exponent all ones = inf/NaN).
_FLOAT_VIEWS = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.BF16: np.uint16}


def check_source_data(source_type: int, raw: np.ndarray, tensor_name: str) -> None:
    """Refuse source bytes llama.cpp refuses: its loader runs ggml_validate_row_data on every tensor it
    reads (check_tensors), so NaN or infinity anywhere, even in a tensor that is only copied, fails the
    run with "tensor ... has invalid data".  Call it for copied tensors; quantize_rows checks its input."""
    raw_bytes = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    info = type_info(source_type)
    if info.type in _FLOAT_VIEWS:
        # The same test as ggml's, in numpy: ggml's version prints its findings to stderr.
        values = raw_bytes.view(_FLOAT_VIEWS[info.type])
        valid = (
            bool(np.isfinite(values).all())
            if info.type != GGMLType.BF16
            else bool(((values & 0x7F80) != 0x7F80).all())
        )
    else:
        valid = ggml.validate_row_data(source_type, raw_bytes)
    if not valid:
        raise PhiquantError(
            f"{tensor_name}: the source data is invalid (NaN or infinite values, or "
            f"malformed {type_info(source_type).name} blocks)"
        )


def _as_experts(data: np.ndarray) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.float32:
        raise PhiquantError("quantize_rows needs a float32 numpy array")
    if data.ndim == 2:
        return np.ascontiguousarray(data)[np.newaxis]
    if data.ndim == 3:
        return np.ascontiguousarray(data)
    raise PhiquantError(f"quantize_rows needs 2-D rows or 3-D stacked experts, got shape {data.shape}")


def _expert_weights(imatrix: np.ndarray | None, n_experts: int, n_per_row: int) -> np.ndarray | None:
    if imatrix is None:
        return None
    if not isinstance(imatrix, np.ndarray) or imatrix.dtype != np.float32:
        raise PhiquantError("the imatrix must be a float32 numpy array")
    if imatrix.size != n_experts * n_per_row:
        raise PhiquantError(
            f"imatrix has {imatrix.size} values; this tensor needs {n_per_row} per expert "
            f"x {n_experts} expert(s) = {n_experts * n_per_row}"
        )
    return np.ascontiguousarray(imatrix).reshape(n_experts, n_per_row)


@dataclass(frozen=True)
class KVOverride:
    """A metadata key llama-quantize adds to the output, with its GGUF value type."""

    key: str
    value: str | int
    gguf_type: str  # "str" or "u32": llama.cpp writes INT overrides as u32 of |value|


# llama-quantize passes kv overrides as char[128], so strings keep at most 127 bytes.
_MAX_OVERRIDE_STRING_BYTES = 127


def _truncate_utf8(text: str, max_bytes: int) -> str:
    # llama.cpp cuts at a byte count (strncpy) and may split a multi-byte character, leaving invalid
    # UTF-8 in the file; phiquant cuts at the last whole character instead.
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def imatrix_kv_overrides(
    imatrix_path: str, datasets: Sequence[str], entries_count: int, chunks_count: int
) -> list[KVOverride]:
    """The quantize.imatrix.* keys llama-quantize writes (tools/quantize/quantize.cpp), in its order.

    `imatrix_path` is the path as the user gave it; `entries_count` the number of imatrix entries passed
    to the quantizer.  Nothing is written for an imatrix without entries, as in llama-quantize.
    """
    if entries_count <= 0:
        return []
    overrides = [
        KVOverride("quantize.imatrix.file", _truncate_utf8(imatrix_path, _MAX_OVERRIDE_STRING_BYTES), "str")
    ]
    if datasets:
        overrides.append(
            KVOverride(
                "quantize.imatrix.dataset", _truncate_utf8(datasets[0], _MAX_OVERRIDE_STRING_BYTES), "str"
            )
        )
    overrides.append(KVOverride("quantize.imatrix.entries_count", abs(entries_count), "u32"))
    if chunks_count > 0:
        overrides.append(KVOverride("quantize.imatrix.chunks_count", chunks_count, "u32"))
    return overrides
