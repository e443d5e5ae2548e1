"""Collecting an importance matrix from llama.cpp's own evaluation of a model.

The statistic is llama.cpp's (tools/imatrix/imatrix.cpp): for every weight matrix W that multiplies an
activation x (x W^T), per input column j, the sum over tokens of x_j^2, and the number of tokens; the
quantizer receives sum / count.  For a Phi-3.5-MoE expert tensor (MUL_MAT_ID), each token contributes
only to the experts its router chose, so every expert has its own sums and count.  Activations are read
in the scheduler's evaluation callback (phiquant.ggml.graph) while llama.cpp decodes the calibration
chunks, so collection costs about what evaluation costs.

Choices that follow llama.cpp, so that our file means what llama-imatrix's would:
- a plain product is recorded only if its weight is a transformer block's (`blk.*`) or the output layer
  and the batch has at least 16 tokens (llama.cpp skips smaller batches);
- every position of a chunk is an output, so the last layer runs on every token;
- the first token of every chunk is BOS when the vocabulary adds one.
Sums are accumulated in float64 (llama.cpp uses float32) and stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.ggml import graph as ggml_graph
from phiquant.ggml.types import GGMLType
from phiquant.imatrix.files import ImatrixEntry, ImportanceMatrix
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.llama import LoadedModel

MIN_BATCH_TOKENS = 16  # llama.cpp's imatrix ignores plain products of smaller batches
OUTPUT_WEIGHT = "output.weight"


@dataclass
class _Accumulator:
    sums: np.ndarray  # float64 (n_matrices, ne0)
    counts: np.ndarray  # int64 (n_matrices,)


class ActivationStatistics:
    """The evaluation callback's state: per weight, per matrix (expert), column sums of x^2 and counts.

    An exception raised inside the callback cannot cross llama.cpp; it is kept and re-raised by
    `raise_pending` after the decode (returning false from the callback would silently stop the graph).
    """

    def __init__(self, *, include_output: bool = True) -> None:
        self.include_output = include_output
        self.accumulators: dict[str, _Accumulator] = {}
        self.pending_error: BaseException | None = None

    def callback(self, address: int, ask: bool) -> bool:
        try:
            node = ggml_graph.tensor_at(address)
            if ask:
                return self._wants(node)
            self._collect(node)
        except BaseException as error:  # noqa: BLE001 - re-raised by raise_pending after the decode
            self.pending_error = self.pending_error or error
        return True

    def raise_pending(self) -> None:
        if self.pending_error is not None:
            error, self.pending_error = self.pending_error, None
            raise error

    def _wanted_weight(self, name: str) -> bool:
        return name.startswith("blk.") or (self.include_output and name == OUTPUT_WEIGHT)

    def _wants(self, node: ggml_graph.GGMLTensor) -> bool:
        operation = ggml_graph.op_name(node)
        if operation not in ("MUL_MAT", "MUL_MAT_ID") or not node.src[0] or not node.src[1]:
            return False
        name = ggml_graph.weight_name(node.src[0].contents)
        if not self._wanted_weight(name):
            return False
        if operation == "MUL_MAT_ID":
            return True
        activations = node.src[1].contents
        return bool(activations.ne[1] >= MIN_BATCH_TOKENS and activations.type == GGMLType.F32)

    def _accumulator(self, name: str, n_matrices: int, ne0: int) -> _Accumulator:
        found = self.accumulators.get(name)
        if found is None:
            found = _Accumulator(np.zeros((n_matrices, ne0)), np.zeros(n_matrices, dtype=np.int64))
            self.accumulators[name] = found
        if found.sums.shape != (n_matrices, ne0):
            raise RuntimeError(f"{name}: activations of shape {(n_matrices, ne0)} after {found.sums.shape}")
        return found

    def _collect(self, node: ggml_graph.GGMLTensor) -> None:
        weight = node.src[0].contents
        name = ggml_graph.weight_name(weight)
        # (ne3, ne2, ne1, ne0) float32
        activations = ggml_graph.tensor_array(node.src[1].contents, np.float32).astype(np.float64)
        if ggml_graph.op_name(node) == "MUL_MAT_ID":
            self._collect_experts(node, name, int(weight.ne[2]), activations)
        else:
            self._collect_dense(name, weight, activations)

    def _collect_dense(self, name: str, weight: ggml_graph.GGMLTensor, activations: np.ndarray) -> None:
        n_matrices = int(weight.ne[2] * weight.ne[3])
        ne0 = activations.shape[-1]
        accumulator = self._accumulator(name, n_matrices, ne0)
        squares = np.square(activations).sum(axis=2)  # (ne3, ne2, ne0)
        for i3 in range(activations.shape[0]):
            for i2 in range(activations.shape[1]):
                # 3-D activations over a 2-D weight fold onto it (broadcast matrix index), as llama.cpp
                matrix = (i3 % int(weight.ne[3])) * int(weight.ne[2]) + (i2 % int(weight.ne[2]))
                accumulator.sums[matrix] += squares[i3, i2]
        accumulator.counts += activations.shape[0] * activations.shape[1] * activations.shape[2] // n_matrices

    def _collect_experts(
        self, node: ggml_graph.GGMLTensor, name: str, n_experts: int, activations: np.ndarray
    ) -> None:
        # activations: (1, n_tokens, n_used or 1, ne0); ids: (1, 1, n_tokens, n_used) int32 expert per slot
        ids = ggml_graph.tensor_array(node.src[2].contents, np.int32)[0, 0]
        tokens = activations[0]
        n_tokens, n_rows, ne0 = tokens.shape
        if ids.shape[0] != n_tokens:
            raise RuntimeError(f"{name}: {ids.shape[0]} routed tokens for {n_tokens} activation rows")
        if ids.size and (ids.min() < 0 or ids.max() >= n_experts):
            raise RuntimeError(f"{name}: expert id outside 0..{n_experts - 1}")
        accumulator = self._accumulator(name, n_experts, ne0)
        slots = np.arange(ids.shape[1]) % n_rows  # the activation row each routing slot reads
        squares = np.square(tokens[:, slots, :])  # (n_tokens, n_used, ne0)
        flat_ids = ids.reshape(-1)
        flat_squares = squares.reshape(-1, ne0)
        for expert in np.unique(flat_ids):
            chosen = flat_ids == expert
            accumulator.sums[expert] += flat_squares[chosen].sum(axis=0)
            accumulator.counts[expert] += int(chosen.sum())

    def importance_matrix(self, dataset: str, chunk_count: int, chunk_size: int) -> ImportanceMatrix:
        entries = {
            name: ImatrixEntry(acc.sums.reshape(-1).astype(np.float32), acc.counts.copy())
            for name, acc in sorted(self.accumulators.items())
        }
        return ImportanceMatrix(entries, (dataset,), chunk_count, chunk_size)


@dataclass
class Collection:
    """An importance matrix and what the run saw."""

    imatrix: ImportanceMatrix
    n_chunks: int
    chunk_size: int
    n_text_tokens: int
    unrouted_experts: dict[str, list[int]] = field(default_factory=dict)  # tensor -> experts never chosen


def calibration_chunks(
    model: LoadedModel, text: str, chunk_size: int, max_chunks: int | None, where: Path | None
) -> tuple[np.ndarray, int]:
    """The text's tokens in whole chunks of `chunk_size` (BOS first where the model adds one), and the
    number of tokens of the text.  Special-token text (the chat portion's `<|user|>` ...) is parsed as the
    special tokens a chat would use."""
    if not text.strip():
        raise PhiquantError("the calibration text is empty", path=where)
    tokens = np.asarray(model.tokenize(text, add_special=True, parse_special=True), dtype=np.int32)
    n_chunks = len(tokens) // chunk_size
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise PhiquantError(
            f"the calibration text has only {len(tokens)} tokens; one chunk needs {chunk_size} "
            "(give a longer text or a smaller --ctx)",
            path=where,
        )
    chunks = tokens[: n_chunks * chunk_size].reshape(n_chunks, chunk_size).copy()
    if model.adds_bos:
        chunks[:, 0] = model.bos_id
    return chunks, len(tokens)


def collect_importance(
    model: LoadedModel,
    chunks: np.ndarray,
    dataset: str,
    *,
    n_text_tokens: int = 0,
    include_output: bool = True,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> Collection:
    """Decode every chunk (one llama.cpp sequence each) and collect the activation statistics."""
    ggml_graph.check_struct_layout()
    n_chunks, chunk_size = chunks.shape
    statistics = ActivationStatistics(include_output=include_output)
    reporter.start("importance matrix", total=n_chunks, unit="chunks")
    with model.new_context(
        chunk_size, n_batch=chunk_size, n_threads=threads, eval_callback=statistics.callback
    ) as context:
        for chunk in chunks:
            context.decode_windows(chunk[None, :], 0)
            statistics.raise_pending()
            reporter.advance(1)
    reporter.finish()
    if not statistics.accumulators:
        raise PhiquantError("llama.cpp evaluated no weight matrices (unsupported model?)", path=model.path)
    imatrix = statistics.importance_matrix(dataset, n_chunks, chunk_size)
    return Collection(imatrix, n_chunks, chunk_size, n_text_tokens, unrouted_experts(imatrix))


def unrouted_experts(imatrix: ImportanceMatrix) -> dict[str, list[int]]:
    """Expert tensors (more than one matrix) whose experts the calibration text never routed to."""
    return {
        name: [int(i) for i in np.flatnonzero(entry.counts == 0)]
        for name, entry in imatrix.entries.items()
        if entry.counts.size > 1 and (entry.counts == 0).any()
    }
