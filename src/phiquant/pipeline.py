"""Streaming a model into one or more GGUF files: read a tensor's rows once, encode them for each
output's planned type, write, release.  Memory stays near one slab of rows, whatever the model size,
and a whole ladder of types costs one read of the source.

Encoding (ggml's kernels, which release the GIL) and writing overlap: encoded slabs go to a writer
thread through a short queue, so the disk works while the next slab is encoded.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFOutput, Metadatum, TensorInfo, open_outputs, predicted_file_size
from phiquant.model_source import ModelSource, SourceTensor
from phiquant.progress import SILENT, Reporter
from phiquant.quant.plan import QuantPlan, TensorDesc, llama_tensor_order
from phiquant.quant.types import GGMLType

# Rows are read and encoded in slabs of about this many float32 bytes.
SLAB_BYTES = 64 * 1024 * 1024
# Encoded slabs waiting for the writer thread (bounds the extra memory to a few slabs).
WRITE_QUEUE_DEPTH = 4

# Encodes float32 rows (n_rows x row_length) as a ggml type, with an optional importance vector.
RowEncoder = Callable[[np.ndarray, int, "np.ndarray | None", str], np.ndarray]
RowSize = Callable[[int, int], int]


@dataclass
class OutputPlan:
    """One GGUF file to produce from the source: where, which ftype, and each tensor's type."""

    path: Path
    file_type: int  # llama_ftype value written to general.file_type
    tensor_types: dict[str, int]  # GGUF tensor name -> ggml type
    extra_metadata: list[Metadatum] = field(default_factory=list)
    seconds: float = 0.0  # time spent encoding and writing this file (filled in by the writer)

    @classmethod
    def from_quant_plan(
        cls, path: Path, plan: QuantPlan, extra_metadata: Sequence[Metadatum] = ()
    ) -> OutputPlan:
        types = {tensor.name: int(tensor.target_type) for tensor in plan.tensors}
        return cls(path, int(plan.preset.ftype), types, list(extra_metadata))


def tensor_descs(source: ModelSource) -> list[TensorDesc]:
    return [TensorDesc(t.name, t.shape, GGMLType(t.base_type)) for t in source.tensors]


def output_metadata(source: ModelSource, plan: OutputPlan) -> list[Metadatum]:
    """The key order llama_model_quantize writes: the source's keys, then the two it always
    rewrites (general.quantization_version, general.file_type), then its key overrides (the
    quantize.imatrix.* keys), so our file equals llama.cpp's byte for byte."""
    return (
        list(source.metadata)
        + [
            Metadatum("general.quantization_version", GGML_QUANT_VERSION, GGUFValueType.UINT32),
            Metadatum("general.file_type", plan.file_type, GGUFValueType.UINT32),
        ]
        + list(plan.extra_metadata)
    )


def ordered_tensors(source: ModelSource) -> list[SourceTensor]:
    by_name = {t.name: t for t in source.tensors}
    return [by_name[name] for name in llama_tensor_order(list(by_name))]


def tensor_infos(source: ModelSource, plan: OutputPlan, row_size: RowSize) -> list[TensorInfo]:
    infos = []
    for tensor in ordered_tensors(source):
        ggml_type = plan.tensor_types[tensor.name]
        nbytes = row_size(ggml_type, tensor.shape[0]) * tensor.n_rows
        infos.append(TensorInfo(tensor.name, tensor.shape, ggml_type, nbytes))
    return infos


def predicted_size(source: ModelSource, plan: OutputPlan, row_size: RowSize) -> int:
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


class _BackgroundWriter:
    """Writes (output, bytes) pairs on one thread, in submission order; re-raises its errors."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[GGUFOutput, np.ndarray | bytes] | None] = queue.Queue(
            WRITE_QUEUE_DEPTH
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="phiquant-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    item[0].write(item[1])
                except BaseException as error:  # noqa: BLE001 - handed to the main thread, re-raised there
                    self._error = error

    def submit(self, output: GGUFOutput, data: np.ndarray | bytes) -> None:
        self._raise_pending()
        self._queue.put((output, data))

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until everything submitted is written; re-raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise_pending()

    def abandon(self) -> None:
        """Stop after the current item, dropping the rest (on error or interrupt)."""
        self._error = self._error or PhiquantError("writing abandoned")
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join()


def write_gguf_files(
    source: ModelSource,
    plans: Sequence[OutputPlan],
    encode_rows: RowEncoder,
    row_size: RowSize,
    *,
    importance: dict[str, np.ndarray] | None = None,
    allow_nonfinite: bool = False,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> list[Path]:
    """Write every planned file in one pass over the source tensors; all appear or none do.

    Each slab of rows is split over `threads` workers (default: every core) that read, check and
    encode their rows for every output; `encode_rows` is called single-threaded per worker."""
    outputs = [
        GGUFOutput(
            plan.path, source.arch, output_metadata(source, plan), tensor_infos(source, plan, row_size)
        )
        for plan in plans
    ]
    tensors = ordered_tensors(source)
    total = sum(4 * t.n_elements for t in tensors)
    reporter.start("writing" if len(plans) == 1 else f"writing {len(plans)} files", total, "B")
    workers = max(1, threads or os.cpu_count() or 1)
    with open_outputs(outputs), ThreadPoolExecutor(workers, thread_name_prefix="phiquant-encode") as pool:
        job = _TensorWriter(plans, outputs, encode_rows, importance, allow_nonfinite, source, pool, workers)
        writer = _BackgroundWriter()
        try:
            for tensor in tensors:
                reporter.note(
                    f"{tensor.name} {list(tensor.shape)} -> "
                    + ", ".join(GGMLType(plan.tensor_types[tensor.name]).name for plan in plans)
                )
                for parts in job.encoded_slabs(tensor):
                    for output, part in parts:
                        writer.submit(output, part)
                    reporter.advance(4 * tensor.shape[0] * job.last_slab_rows)
            writer.close()
        except BaseException:
            writer.abandon()
            raise
    reporter.finish()
    return [plan.path for plan in plans]


@dataclass
class _TensorWriter:
    """Reads, checks and encodes one tensor's slabs for every output, splitting rows over a pool."""

    plans: Sequence[OutputPlan]
    outputs: Sequence[GGUFOutput]
    encode_rows: RowEncoder
    importance: dict[str, np.ndarray] | None
    allow_nonfinite: bool
    source: ModelSource
    pool: ThreadPoolExecutor
    workers: int
    last_slab_rows: int = 0

    def encoded_slabs(self, tensor: SourceTensor) -> Iterator[list[tuple[GGUFOutput, np.ndarray]]]:
        """For each slab: (output, bytes) pairs in the order they must be written."""
        types = [plan.tensor_types[tensor.name] for plan in self.plans]
        weights = (self.importance or {}).get(tensor.name)
        for start, stop in slab_bounds(tensor):
            importance = importance_slice(weights, tensor, start)
            futures = [
                self.pool.submit(self._encode, tensor, a, b, types, importance)
                for a, b in _split_rows(start, stop, self.workers)
            ]
            parts = [future.result() for future in futures]
            # Workers run side by side: a type's share of the wall time is its summed time / workers.
            for k, plan in enumerate(self.plans):
                plan.seconds += sum(durations[k] for _, durations in parts) / self.workers
            self.last_slab_rows = stop - start
            yield [(output, encoded[k]) for k, output in enumerate(self.outputs) for encoded, _ in parts]

    def _encode(
        self, tensor: SourceTensor, start: int, stop: int, types: list[int], importance: np.ndarray | None
    ) -> tuple[list[np.ndarray], list[float]]:
        rows = tensor.read_rows(start, stop)
        if not self.allow_nonfinite and not np.isfinite(rows).all():
            # llama.cpp refuses such files at load time (check_tensors); say so now, by name.
            raise PhiquantError(
                f"tensor {tensor.name} holds NaN or Inf values; refusing to convert a broken "
                "checkpoint (pass --allow-nonfinite to write it anyway)",
                path=self.source.origin,
            )
        encoded, durations = [], []
        for ggml_type in types:
            started = time.perf_counter()
            if ggml_type == tensor.base_type and tensor.read_raw is not None:
                encoded.append(tensor.read_raw(start, stop))
            else:
                encoded.append(self.encode_rows(rows, ggml_type, importance, tensor.name))
            durations.append(time.perf_counter() - started)
        return encoded, durations


def _split_rows(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, -(-(stop - start) // parts))
    return [(s, min(s + step, stop)) for s in range(start, stop, step)]
