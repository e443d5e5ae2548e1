"""Streaming a model into one or more GGUF files: read a tensor's rows once, encode them for each
output's planned type, write, release.  Memory stays near a few slabs of rows, whatever the model size,
and a whole ladder of types costs one read of the source.

Slabs are independent work items: each worker reads, checks and encodes whole slabs (ggml's kernels
release the GIL) while a window of later slabs waits queued, so no worker waits for another at a slab
or tensor boundary; the main thread collects slabs in file order and hands them to a writer thread,
so the disk works while later slabs are encoded.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFOutput, TensorInfo, open_outputs
from phiquant.gguf_io.split import ShardedOutput, SplitLimits, model_output, output_parts, output_paths
from phiquant.model_source import Metadatum, ModelSource, SourceTensor
from phiquant.progress import SILENT, Reporter
from phiquant.quant.plan import QuantPlan, TensorDesc, llama_tensor_order
from phiquant.quant.quantize import all_finite
from phiquant.quant.types import GGMLType

# Rows are read and encoded in slabs of about this many float32 bytes: small enough that a few per
# worker in flight stay far below the memory of one large tensor, large enough that the per-slab
# Python work is negligible beside the encoding.
SLAB_BYTES = 16 * 1024 * 1024
# Slabs queued or being encoded, per worker: a worker that finishes early takes the next one at once.
SLABS_IN_FLIGHT_PER_WORKER = 3
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
    split: SplitLimits | None = None  # write shards of at most this much (gguf_io.split)

    @classmethod
    def from_quant_plan(
        cls,
        path: Path,
        plan: QuantPlan,
        extra_metadata: Sequence[Metadatum] = (),
        split: SplitLimits | None = None,
    ) -> OutputPlan:
        types = {tensor.name: int(tensor.target_type) for tensor in plan.tensors}
        return cls(path, int(plan.preset.ftype), types, list(extra_metadata), split=split)


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


def planned_output(source: ModelSource, plan: OutputPlan, row_size: RowSize) -> GGUFOutput | ShardedOutput:
    """The file (or the shards) `plan` makes, not yet opened."""
    return model_output(
        plan.path,
        source.arch,
        output_metadata(source, plan),
        tensor_infos(source, plan, row_size),
        plan.split,
    )


def predicted_size(source: ModelSource, plan: OutputPlan, row_size: RowSize) -> int:
    """Bytes on disk, over all shards of a split output."""
    return planned_output(source, plan, row_size).predicted_size


def planned_paths(source: ModelSource, plan: OutputPlan, row_size: RowSize) -> list[Path]:
    """The files `plan` makes: its path, or its shards (the first is what llama.cpp loads)."""
    return output_paths(planned_output(source, plan, row_size))


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
        self._queue: queue.Queue[tuple[GGUFOutput | ShardedOutput, np.ndarray | bytes] | None] = queue.Queue(
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

    def submit(self, output: GGUFOutput | ShardedOutput, data: np.ndarray | bytes) -> None:
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

    Slabs of rows go to `threads` workers (default: every core), each reading, checking and encoding a
    slab for every output; `encode_rows` is called single-threaded per worker."""
    outputs = [planned_output(source, plan, row_size) for plan in plans]
    tensors = ordered_tensors(source)
    total = sum(4 * t.n_elements for t in tensors)
    reporter.start("writing" if len(plans) == 1 else f"writing {len(plans)} files", total, "B")
    workers = max(1, threads or os.cpu_count() or 1)
    encoder = _SlabEncoder(encode_rows, allow_nonfinite, source)
    in_flight: deque[tuple[_Slab, Future[_Encoded]]] = deque()
    parts = [part for output in outputs for part in output_parts(output)]
    with open_outputs(parts), ThreadPoolExecutor(workers, thread_name_prefix="phiquant-encode") as pool:
        writer = _BackgroundWriter()
        try:
            for slab in _slabs(tensors, plans, importance or {}):
                if slab.tensor.read_ahead is not None:  # read while the slabs before it encode
                    slab.tensor.read_ahead(slab.start, slab.stop)
                in_flight.append((slab, pool.submit(encoder.encode, slab)))
                if len(in_flight) >= SLABS_IN_FLIGHT_PER_WORKER * workers:
                    _hand_to_writer(*in_flight.popleft(), plans, outputs, writer, workers, reporter)
            while in_flight:
                _hand_to_writer(*in_flight.popleft(), plans, outputs, writer, workers, reporter)
            writer.close()
        except BaseException:
            for _, future in in_flight:
                future.cancel()
            writer.abandon()
            raise
    reporter.finish()
    return [output.path for output in outputs]


@dataclass(frozen=True)
class _Slab:
    """Rows start:stop of one tensor, to encode as each output's type for that tensor."""

    tensor: SourceTensor
    start: int
    stop: int
    types: list[int]
    importance: np.ndarray | None


# A slab's bytes for each output, and the seconds each output's encoding took.
_Encoded = tuple[list[np.ndarray], list[float]]


def _slabs(
    tensors: Sequence[SourceTensor], plans: Sequence[OutputPlan], importance: dict[str, np.ndarray]
) -> Iterator[_Slab]:
    for tensor in tensors:
        types = [plan.tensor_types[tensor.name] for plan in plans]
        weights = importance.get(tensor.name)
        for start, stop in slab_bounds(tensor):
            yield _Slab(tensor, start, stop, types, importance_slice(weights, tensor, start))


def _hand_to_writer(
    slab: _Slab,
    future: Future[_Encoded],
    plans: Sequence[OutputPlan],
    outputs: Sequence[GGUFOutput | ShardedOutput],
    writer: _BackgroundWriter,
    workers: int,
    reporter: Reporter,
) -> None:
    """Wait for the oldest slab (file order) and queue its bytes for every output."""
    encoded, durations = future.result()
    if slab.start == 0:
        reporter.note(
            f"{slab.tensor.name} {list(slab.tensor.shape)} -> "
            + ", ".join(GGMLType(t).name for t in slab.types)
        )
    for plan, seconds in zip(plans, durations, strict=True):
        plan.seconds += seconds / workers  # workers run side by side: a share of the wall time
    for output, data in zip(outputs, encoded, strict=True):
        writer.submit(output, data)
    reporter.advance(4 * slab.tensor.shape[0] * (slab.stop - slab.start))


@dataclass(frozen=True)
class _SlabEncoder:
    """Reads, checks and encodes one slab for every output (runs on a pool worker)."""

    encode_rows: RowEncoder
    allow_nonfinite: bool
    source: ModelSource

    def encode(self, slab: _Slab) -> _Encoded:
        tensor = slab.tensor
        rows = tensor.read_rows(slab.start, slab.stop)
        if not self.allow_nonfinite and not all_finite(rows):
            # llama.cpp refuses such files at load time (check_tensors); say so now, by name.
            raise PhiquantError(
                f"tensor {tensor.name} holds NaN or Inf values; refusing to convert a broken "
                "checkpoint (pass --allow-nonfinite to write it anyway)",
                path=self.source.origin,
            )
        encoded, durations = [], []
        # Outputs wanting the same type of a slab share one encoding: the rows and importance are the
        # same, so are the bytes (a budget's probe files differ from each other in a few tensors only).
        by_type: dict[int, np.ndarray] = {}
        for ggml_type in slab.types:
            started = time.perf_counter()
            if ggml_type not in by_type:
                if ggml_type == tensor.base_type and tensor.read_raw is not None:
                    by_type[ggml_type] = tensor.read_raw(slab.start, slab.stop)
                else:
                    by_type[ggml_type] = self.encode_rows(rows, ggml_type, slab.importance, tensor.name)
            encoded.append(by_type[ggml_type])
            durations.append(time.perf_counter() - started)
        return encoded, durations
