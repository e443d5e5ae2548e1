"""Each tensor's relative importance-weighted quantization error for each candidate type, measured with
ggml's own quantizers (quantize, then dequantize) on the real weights, with the importance matrix the
file will be quantized with (quant.budget explains what the number predicts).

Large tensors are measured on evenly spaced slabs of rows (at most `max_rows` rows per matrix), so a
14B model costs seconds per candidate rather than a full quantization each; the error is a mean over
rows, which a few hundred rows estimate to about a percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from phiquant.ggml import kernels as ggml
from phiquant.model_source import SourceTensor
from phiquant.quant.budget import TensorOptions, TypeOption
from phiquant.quant.quantize import quantize_rows
from phiquant.quant.rules import layer_from_name, tensor_category
from phiquant.quant.types import GGMLType, type_info

# Candidates, cheapest first.  The IQ types need an importance matrix (ggml refuses IQ2_XXS/IQ2_XS/IQ1_S
# without one, and the others are poor without); without one the k-quants and Q8_0 remain.
CANDIDATES_WITH_IMATRIX = (
    GGMLType.IQ1_S, GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.Q2_K, GGMLType.IQ3_XXS, GGMLType.IQ3_S,
    GGMLType.Q3_K, GGMLType.IQ4_XS, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_0,
)  # fmt: skip
CANDIDATES_WITHOUT_IMATRIX = (
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_0,
)  # fmt: skip
DEFAULT_MAX_ROWS = 256
SLAB_ROWS = 32


def candidate_types(row_length: int, has_importance: bool) -> list[GGMLType]:
    """The candidates whose blocks divide the row and whose quantizer can run here."""
    pool = CANDIDATES_WITH_IMATRIX if has_importance else CANDIDATES_WITHOUT_IMATRIX
    return [t for t in pool if row_length % type_info(t).block_size == 0]


def sampled_slabs(n_rows: int, rows_per_matrix: int, max_rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) to measure: all rows of small matrices, else evenly spaced slabs."""
    slabs = []
    for matrix_start in range(0, n_rows, rows_per_matrix):
        if rows_per_matrix <= max_rows:
            slabs.append((matrix_start, matrix_start + rows_per_matrix))
            continue
        n_slabs = max(1, max_rows // SLAB_ROWS)
        starts = np.linspace(0, rows_per_matrix - SLAB_ROWS, n_slabs).astype(int)
        slabs += [(matrix_start + int(s), matrix_start + int(s) + SLAB_ROWS) for s in starts]
    return slabs


def weighted_squares(
    rows: np.ndarray, ggml_type: GGMLType, weights: np.ndarray | None, threads: int | None
) -> float:
    """sum_ij imp_j (w'_ij - w_ij)^2 over the rows, w' being ggml's quantize-dequantize round trip."""
    encoded = quantize_rows(
        rows, ggml_type, None if weights is None else weights.astype(np.float32), n_threads=threads
    )
    decoded = ggml.dequantize(ggml_type, encoded.reshape(-1), rows.size).reshape(rows.shape)
    difference = np.square(decoded.astype(np.float64) - rows).sum(axis=0)
    return float(difference @ (np.ones(rows.shape[1]) if weights is None else weights))


def measure_tensor(
    tensor: SourceTensor,
    types: Sequence[GGMLType],
    importance: np.ndarray | None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    threads: int | None = None,
) -> TensorOptions:
    """The tensor's options: bytes and relative weighted error per candidate type."""
    row_length = tensor.shape[0]
    rows_per_matrix = tensor.shape[1] if len(tensor.shape) > 1 else 1
    errors = dict.fromkeys(types, 0.0)
    norm = 0.0
    for start, stop in sampled_slabs(tensor.n_rows, rows_per_matrix, max_rows):
        rows = tensor.read_rows(start, stop).astype(np.float32)
        matrix = start // rows_per_matrix
        weights = None if importance is None else importance[matrix * row_length : (matrix + 1) * row_length]
        norm += float(
            np.square(rows, dtype=np.float64).sum(axis=0)
            @ (np.ones(row_length) if weights is None else weights)
        )
        for ggml_type in types:
            errors[ggml_type] += weighted_squares(rows, ggml_type, weights, threads)
    options = tuple(
        TypeOption(
            t, type_info(t).row_bytes(row_length) * tensor.n_rows, errors[t] / norm if norm > 0 else 0.0
        )
        for t in types
    )
    return TensorOptions(
        tensor.name, tensor_category(tensor.name).value, options, layer_from_name(tensor.name)
    )


def measure_tensors(
    tensors: Sequence[SourceTensor],
    importance: Mapping[str, np.ndarray],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    threads: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> list[TensorOptions]:
    """Every tensor's options; a tensor without importance (the token embedding, or no imatrix at all)
    is measured with uniform weights and offered only the types that do not need an imatrix."""
    measured = []
    for tensor in tensors:
        weights = importance.get(tensor.name)
        types = candidate_types(tensor.shape[0], bool(importance))
        if weights is None:
            types = [t for t in types if not ggml.quantize_requires_imatrix(t)]
        measured.append(measure_tensor(tensor, types, weights, max_rows=max_rows, threads=threads))
        progress(math.prod(tensor.shape))
    return measured
