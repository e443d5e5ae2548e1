"""Lazy tensors built from other lazy tensors: row ranges, experts stacked into one 3-D tensor, and
centring transforms.  Nothing is read until the writer asks for rows, and then only those rows (plus,
for column centring, one pass over the matrix the first time).

A row reader is `read(start, stop) -> float32 array (stop - start, row_length)`, as
`SafetensorsEntry.read` and `SourceTensor.read_rows` are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from phiquant.ggml.types import GGMLType
from phiquant.model_source import SourceTensor

RowReader = Callable[[int, int], np.ndarray]

# Column means are accumulated over slabs of about this many values.
COLUMN_MEAN_SLAB_VALUES = 4 * 1024 * 1024


def row_range(read: RowReader, offset: int) -> RowReader:
    """Rows [offset, ...) of a reader, renumbered from 0 (one expert of a stacked checkpoint tensor)."""
    return lambda start, stop: read(offset + start, offset + stop)


def stacked_experts(
    name: str, experts: list[RowReader], rows_per_expert: int, row_length: int
) -> SourceTensor:
    """A 3-D tensor {row_length, rows_per_expert, n_expert} whose rows of expert e come from experts[e].

    The writer reads slabs that never cross an expert (pipeline.slab_bounds), so each read touches one
    expert's source tensor and no layer's experts are ever held together."""

    def read_rows(start: int, stop: int) -> np.ndarray:
        parts = []
        while start < stop:
            expert, row = divmod(start, rows_per_expert)
            count = min(stop - start, rows_per_expert - row)
            parts.append(experts[expert](row, row + count))
            start += count
        if not parts:
            return np.zeros((0, row_length), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return SourceTensor(name, (row_length, rows_per_expert, len(experts)), GGMLType.F32, read_rows)


def centred_rows(read: RowReader) -> RowReader:
    """Each row minus its own mean (accumulated in float64, subtracted in float32: no float64 copy of
    the slab)."""

    def read_centred(start: int, stop: int) -> np.ndarray:
        rows = read(start, stop)
        return rows - rows.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)

    return read_centred


def centred_columns(read: RowReader, n_rows: int) -> RowReader:
    """Each column minus its mean over the matrix's `n_rows` rows: for a projection stored [out, in],
    every output then has zero mean across the output dimension, whatever the input.  The means take
    one extra pass over the matrix, on first use, and are kept (one vector per matrix)."""
    means: list[np.ndarray] = []

    def column_means(row_length: int) -> np.ndarray:
        if not means:
            step = max(1, COLUMN_MEAN_SLAB_VALUES // max(1, row_length))
            total = np.zeros(row_length, dtype=np.float64)
            for start in range(0, n_rows, step):
                total += read(start, min(start + step, n_rows)).sum(axis=0, dtype=np.float64)
            means.append((total / n_rows).astype(np.float32))
        return means[0]

    def read_centred(start: int, stop: int) -> np.ndarray:
        rows = read(start, stop)
        return rows - column_means(rows.shape[1])

    return read_centred


def with_reader(tensor: SourceTensor, transform: Callable[[RowReader], RowReader]) -> SourceTensor:
    """The same tensor with its rows passed through `transform`."""
    return dataclasses.replace(tensor, read_rows=transform(tensor.read_rows))
