"""Streaming a model into one or more GGUF files: read a tensor's rows once, encode them for each
output's chosen type, write, release.  Memory stays near one slab of rows, whatever the model size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFOutput, Metadatum, TensorInfo, open_outputs, predicted_file_size
from phiquant.model_source import ModelSource, SourceTensor
from phiquant.progress import SILENT, Reporter

# Rows are read and encoded in slabs of about this many float32 bytes.
SLAB_BYTES = 64 * 1024 * 1024

_BLOCK_PREFIX = re.compile(r"^blk\.(\d+)\.")

# Encodes float32 rows (n_rows x row_length) as `ggml_type`, with an optional importance vector.
RowEncoder = Callable[[np.ndarray, int, "np.ndarray | None"], np.ndarray]


@dataclass
class OutputPlan:
    """One GGUF file to produce from the source: where, which ftype, and each tensor's type."""

    path: Path
    file_type: int  # llama_ftype value written to general.file_type
    tensor_types: dict[str, int]  # GGUF tensor name -> ggml type
    extra_metadata: list[Metadatum] = field(default_factory=list)


def llama_tensor_order(names: Sequence[str]) -> list[str]:
    """llama.cpp's loader order (llama-model-loader.h weight_name_comparer): tensors outside
    blocks first, then blocks by number, each group in byte order.  llama_model_quantize writes
    in this order and its per-layer counters follow it, so phiquant writes the same order."""

    def key(name: str) -> tuple[int, bytes]:
        match = _BLOCK_PREFIX.match(name)
        return (int(match.group(1)) if match else -1, name.encode())

    return sorted(names, key=key)


def output_metadata(source: ModelSource, plan: OutputPlan) -> list[Metadatum]:
    """Source metadata, the plan's extras, then the two keys llama_model_quantize (re)writes last,
    so a llama.cpp requantization of our file keeps the same key order."""
    return (
        list(source.metadata)
        + list(plan.extra_metadata)
        + [
            Metadatum("general.quantization_version", GGML_QUANT_VERSION, GGUFValueType.UINT32),
            Metadatum("general.file_type", plan.file_type, GGUFValueType.UINT32),
        ]
    )


def tensor_infos(
    source: ModelSource, plan: OutputPlan, row_size: Callable[[int, int], int]
) -> list[TensorInfo]:
    infos = []
    for tensor in ordered_tensors(source):
        ggml_type = plan.tensor_types[tensor.name]
        infos.append(
            TensorInfo(
                tensor.name, tensor.shape, ggml_type, row_size(ggml_type, tensor.shape[0]) * tensor.n_rows
            )
        )
    return infos


def ordered_tensors(source: ModelSource) -> list[SourceTensor]:
    by_name = {t.name: t for t in source.tensors}
    return [by_name[name] for name in llama_tensor_order(list(by_name))]


def predicted_size(source: ModelSource, plan: OutputPlan, row_size: Callable[[int, int], int]) -> int:
    return predicted_file_size(
        source.arch, output_metadata(source, plan), tensor_infos(source, plan, row_size)
    )


def slab_bounds(tensor: SourceTensor) -> list[tuple[int, int]]:
    """Row ranges to process; a slab never crosses an expert boundary of a 3-D tensor, so each
    slab uses one expert's importance vector (as llama_model_quantize does)."""
    rows_per_matrix = tensor.shape[1] if len(tensor.shape) > 1 else 1
    step = max(1, min(rows_per_matrix, SLAB_BYTES // max(1, 4 * tensor.shape[0])))
    bounds = []
    for matrix_start in range(0, tensor.n_rows, rows_per_matrix):
        matrix_stop = min(matrix_start + rows_per_matrix, tensor.n_rows)
        bounds += [(s, min(s + step, matrix_stop)) for s in range(matrix_start, matrix_stop, step)]
    return bounds


def importance_slice(weights: np.ndarray | None, tensor: SourceTensor, row_start: int) -> np.ndarray | None:
    if weights is None:
        return None
    row_length = tensor.shape[0]
    matrix = row_start // tensor.shape[1] if len(tensor.shape) > 2 else 0
    return weights[matrix * row_length : (matrix + 1) * row_length]


def write_gguf_files(
    source: ModelSource,
    plans: Sequence[OutputPlan],
    encode_rows: RowEncoder,
    row_size: Callable[[int, int], int],
    *,
    importance: dict[str, np.ndarray] | None = None,
    allow_nonfinite: bool = False,
    reporter: Reporter = SILENT,
) -> list[Path]:
    """Write every planned file in one pass over the source tensors; all appear or none do."""
    outputs = [
        GGUFOutput(
            plan.path, source.arch, output_metadata(source, plan), tensor_infos(source, plan, row_size)
        )
        for plan in plans
    ]
    tensors = ordered_tensors(source)
    reporter.start(
        "writing" if len(plans) == 1 else f"writing {len(plans)} files",
        sum(4 * t.n_elements for t in tensors),
        "B",
    )
    with open_outputs(outputs):
        for tensor in tensors:
            types = [plan.tensor_types[tensor.name] for plan in plans]
            reporter.note(f"{tensor.name} {list(tensor.shape)} -> {', '.join(map(str, types))}")
            weights = (importance or {}).get(tensor.name)
            for start, stop in slab_bounds(tensor):
                rows = tensor.read_rows(start, stop)
                if not allow_nonfinite and not np.isfinite(rows).all():
                    raise PhiquantError(
                        f"tensor {tensor.name} holds NaN or Inf values; refusing to convert a broken "
                        "checkpoint (pass --allow-nonfinite to write it anyway)",
                        path=source.origin,
                    )
                slice_ = importance_slice(weights, tensor, start)
                for output, ggml_type in zip(outputs, types):
                    if ggml_type == tensor.base_type and tensor.read_raw is not None:
                        output.write(tensor.read_raw(start, stop))
                    else:
                        output.write(encode_rows(rows, ggml_type, slice_))
                reporter.advance(4 * rows.size)
                del rows
    reporter.finish()
    return [plan.path for plan in plans]


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    dims = len(shape)
    while dims > 1 and shape[dims - 1] == 1:
        dims -= 1
    return dims


def total_elements(tensors: Sequence[SourceTensor]) -> int:
    return sum(math.prod(t.shape) for t in tensors)
