"""The evaluation pass: every file over the same windows, scored against the reference's rebuilt logits.

Files are loaded together in groups that fit in memory, and every batch of windows is decoded by every
file of the group: the reference's logits of the batch, and their softmax, are rebuilt once for the whole
group (for a small model the output layer is a large share of the work).  Rebuilding, decoding and
scoring overlap on three threads.  Decoding goes through phiquant's runtime (runtime.loader's AMX-safe
loading, llama.cpp contexts with one KV stream per window, as llama-perplexity).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from phiquant.evaluate.files import ModelFile
from phiquant.evaluate.output_layer import OutputLayer
from phiquant.evaluate.reference import ReferenceSource
from phiquant.evaluate.scoring import ReferenceRows, TokenScores, reference_rows, score_rows
from phiquant.evaluate.sequential import SequentialEstimator, WindowMeans, feed_batch
from phiquant.evaluate.windows import WindowPlan
from phiquant.progress import Reporter
from phiquant.runtime.llama import Context, LoadedModel
from phiquant.runtime.loader import ProbeVerdict, load_model, verdict_for_types

MEMORY_SHARE = 0.4  # of available memory for the files of one group (mapped weights, KV caches, logits)


@dataclass
class PassResult:
    scores: list[TokenScores]  # one per file, in the order given; windows in the order visited
    reference_scores: TokenScores | None  # the reference's own, from its rebuilt logits
    decode_seconds: float  # time spent inside llama.cpp's decode, all files together
    seconds: float  # the batch loops: decoding, rebuilding reference logits, scoring (not loading)
    windows: list[int] = field(default_factory=list)  # the windows scored, in the order visited


def available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_estimate(file: ModelFile, plan: WindowPlan) -> int:
    """Mapped weights + F16 KV cache + the logits buffer of one batch."""
    gguf, arch = file.gguf, file.gguf.arch
    n_layer = int(gguf.get(f"{arch}.block_count", 0) or 0)
    n_embd = int(gguf.get(f"{arch}.embedding_length", 0) or 0)
    n_head = int(gguf.get(f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(gguf.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    n_tokens = plan.windows_per_batch * plan.ctx
    kv = 2 * 2 * n_layer * n_tokens * (n_embd // n_head * n_head_kv)
    n_vocab = len(gguf.get("tokenizer.ggml.tokens") or [])
    logits = 4 * n_vocab * plan.windows_per_batch * (plan.ctx - plan.first_scored)
    return file.file_size + kv + logits


def group_files(files: Sequence[ModelFile], plan: WindowPlan, budget: int) -> list[list[int]]:
    """Indices of files to evaluate together, in order, each group within `budget` (at least one file)."""
    groups: list[list[int]] = []
    used = 0
    for index, file in enumerate(files):
        need = memory_estimate(file, plan)
        if groups and used + need <= budget:
            groups[-1].append(index)
            used += need
        else:
            groups.append([index])
            used = need
    return groups


@dataclass
class _FileSlot:
    """One file of a group: its contexts (two when memory allows, used in turn, so one can decode while
    the other's logits are still being scored) and the scoring in flight on each."""

    contexts: list[Context]
    scores: TokenScores
    in_flight: list[Future[WindowMeans] | None]

    def free_context(self, batch_number: int) -> Context:
        index = batch_number % len(self.contexts)
        pending = self.in_flight[index]
        if pending is not None:
            pending.result()  # its logits are scored: llama.cpp may overwrite them
        return self.contexts[index]

    def scoring(self, batch_number: int, future: Future[WindowMeans]) -> None:
        self.in_flight[batch_number % len(self.contexts)] = future

    def wait(self) -> None:
        for pending in self.in_flight:
            if pending is not None:
                pending.result()

    def settle(self) -> None:
        """Let scoring in flight finish, whatever it raises (the pass is ending either way)."""
        futures.wait([pending for pending in self.in_flight if pending is not None])


def evaluate_pass(
    files: Sequence[ModelFile],
    plan: WindowPlan,
    reference: ModelFile | None,
    source: ReferenceSource | None,
    *,
    n_threads: int | None,
    reporter: Reporter,
    memory_budget: int | None = None,
    order: np.ndarray | None = None,
    estimator: SequentialEstimator | None = None,
) -> PassResult:
    """Decode the windows with every file and score them, in `order` (default: text order, every
    window).  Three threads share the work, each mostly outside the GIL: this one runs llama.cpp's
    decode, one rebuilds the reference's logits of the batch (ggml), one scores (numpy).

    With an `estimator`, every file runs in one sweep (one group) and the pass stops after the first
    batch at which the estimator is settled; when the files do not fit the memory budget together (a
    budget of 0 never fits), each is loaded only while it decodes a batch (`_decode_in_turn`), so memory
    does not grow with the number of files."""
    budget = memory_budget if memory_budget is not None else int(MEMORY_SHARE * available_memory())
    windows = np.arange(plan.n_windows) if order is None else np.asarray(order)
    result = PassResult([TokenScores() for _ in files], TokenScores() if source else None, 0.0, 0.0)
    reporter.start("evaluating", len(windows) * len(files), "windows")
    groups = [list(range(len(files)))] if estimator is not None else group_files(files, plan, budget)
    with ExitStack() as outer:
        output_layer = None
        if reference is not None and source is not None:
            output_layer = outer.enter_context(OutputLayer(reference.gguf, n_threads))
        rebuilder = outer.enter_context(ThreadPoolExecutor(1, thread_name_prefix="phiquant-reference"))
        scorer = outer.enter_context(ThreadPoolExecutor(1, thread_name_prefix="phiquant-scores"))
        for group_number, group in enumerate(groups):
            with ExitStack() as stack:
                spare = budget - sum(memory_estimate(files[i], plan) for i in group)
                # A sweep (one group, every file) that does not fit the budget loads its files in turn.
                one_at_a_time = estimator is not None and spare < 0
                if estimator is not None:
                    spare = 0  # each batch is scored before the next: a second context would sit idle
                in_turn = _InTurn(files) if one_at_a_time else None
                slots = (
                    []
                    if one_at_a_time
                    else [
                        _open_slot(stack, files[i], plan, n_threads, spare, result.scores[i]) for i in group
                    ]
                )
                began = time.perf_counter()
                for batch_number, indices in enumerate(plan.batches_of(windows)):
                    targets = plan.targets_at(indices).reshape(-1)
                    rows: Future[ReferenceRows] | None = None
                    own = result.reference_scores if group_number == 0 else None
                    if output_layer is not None and source is not None:
                        hidden = source.hidden(indices)
                        rows = rebuilder.submit(_rebuild, output_layer, hidden, targets, own)
                    tokens = plan.windows_at(indices)
                    batch: list[Future[WindowMeans]] = []
                    if in_turn is not None:
                        batch = _decode_in_turn(
                            in_turn, plan, n_threads, tokens, targets, rows, result, scorer
                        )
                    for slot in slots:
                        context = slot.free_context(batch_number)
                        decode_began = time.perf_counter()
                        out = context.decode_windows(tokens, plan.first_scored)
                        result.decode_seconds += time.perf_counter() - decode_began
                        logits = out.logits[:, : plan.scored_per_window]
                        batch.append(scorer.submit(_score, logits, targets, rows, slot.scores))
                        slot.scoring(batch_number, batch[-1])
                    reporter.advance(len(indices) * len(group))
                    if group_number == 0:
                        result.windows += [int(w) for w in indices]
                    if estimator is not None:
                        own_nll = None
                        if rows is not None:
                            own_nll = rows.result().nll.reshape(-1, plan.scored_per_window).mean(axis=1)
                        if feed_batch(estimator, [f.result() for f in batch], own_nll):
                            break
                for slot in slots:
                    slot.wait()
                result.seconds += time.perf_counter() - began
    reporter.finish()
    return result


class _InTurn:
    """What a sweep that decodes its files in turn keeps between batches: each file's loading verdict
    (runtime.loader, from the header already read) and two buffers for copies of a batch's logits,
    reused rather than allocated (and page-faulted) per file.  The models themselves are loaded again
    for each batch, so memory does not grow with the number of files."""

    def __init__(self, files: Sequence[ModelFile]):
        self.files = files
        self.verdicts = [_verdict(file) for file in files]
        self._buffers: list[np.ndarray] = []

    def load(self, index: int) -> LoadedModel:
        return load_model(self.files[index].path, verdict=self.verdicts[index])

    def copy(self, turn: int, logits: np.ndarray) -> np.ndarray:
        """`logits` copied into buffer `turn` % 2 (the other may still be being scored)."""
        slot = turn % 2
        if len(self._buffers) <= slot:
            self._buffers.append(np.empty_like(logits))
        buffer = self._buffers[slot]
        if buffer.shape[1:] != logits.shape[1:] or len(buffer) < len(logits):
            buffer = self._buffers[slot] = np.empty_like(logits)
        view = buffer[: len(logits)]
        np.copyto(view, logits)
        return view


def _decode_in_turn(
    in_turn: _InTurn,
    plan: WindowPlan,
    n_threads: int | None,
    tokens: np.ndarray,
    targets: np.ndarray,
    rows: Future[ReferenceRows] | None,
    result: PassResult,
    scorer: ThreadPoolExecutor,
) -> list[Future[WindowMeans]]:
    """One batch decoded by every file in turn, each loaded only while it decodes (memory_budget 0 in a
    sweep): memory holds one model, one context and two copies of a batch's logits (one being scored,
    one just decoded), whatever the number of files, while the reference's rows of the batch are
    rebuilt once for them all.  Scoring a file's copied logits overlaps the next file's decoding.  The
    caller waits for the batch's scores before the next batch (feed_batch), so the buffers are free
    when a batch starts."""
    batch: list[Future[WindowMeans]] = []
    for index, scores in enumerate(result.scores):
        with ExitStack() as stack:
            model = stack.enter_context(in_turn.load(index))
            context = _open_context(stack, model, plan, n_threads)
            decode_began = time.perf_counter()
            out = context.decode_windows(tokens, plan.first_scored)
            result.decode_seconds += time.perf_counter() - decode_began
            # The other buffer may still be being scored; this one's last copy was scored before the
            # previous file's was queued.
            logits = in_turn.copy(index, out.logits[:, : plan.scored_per_window])
        if batch:
            batch[-1].result()  # the previous copy scored before this one queues
        batch.append(scorer.submit(_score, logits, targets, rows, scores))
    return batch


def _verdict(file: ModelFile) -> ProbeVerdict:
    return verdict_for_types({t.ggml_type for t in file.gguf.tensors})


def _rebuild(
    output_layer: OutputLayer, hidden: np.ndarray, targets: np.ndarray, own: TokenScores | None
) -> ReferenceRows:
    rows = reference_rows(output_layer.logits(hidden), targets)
    if own is not None:
        own.nll.append(rows.nll)
        own.top.append(rows.top)
    return rows


def _score(
    logits: np.ndarray, targets: np.ndarray, rows: Future[ReferenceRows] | None, scores: TokenScores
) -> WindowMeans:
    """Score one file's batch: (windows, scored positions, vocab) logits, window after window; return
    each window's mean nll, KLD and same-top fraction (NaN without a reference)."""
    reference = rows.result() if rows is not None else None
    per_window = logits.shape[1]
    means = np.full((logits.shape[0], 3), np.nan)
    for window in range(logits.shape[0]):
        span = slice(window * per_window, (window + 1) * per_window)
        part = _rows_of(reference, span) if reference is not None else None
        mark = len(scores.nll), len(scores.kld), len(scores.same_top)
        score_rows(logits[window], targets[span], part, scores)
        means[window, 0] = np.concatenate(scores.nll[mark[0] :]).mean()
        if reference is not None:
            means[window, 1] = np.concatenate(scores.kld[mark[1] :]).mean()
            means[window, 2] = np.concatenate(scores.same_top[mark[2] :]).mean()
    return means


def _rows_of(reference: ReferenceRows, span: slice) -> ReferenceRows:
    return ReferenceRows(
        reference.logits[span],
        reference.probabilities[span],
        reference.total[span],
        reference.lse[span],
        reference.top[span],
        reference.nll[span],
    )


def _open_slot(
    stack: ExitStack,
    file: ModelFile,
    plan: WindowPlan,
    n_threads: int | None,
    spare: int,
    scores: TokenScores,
) -> _FileSlot:
    model = stack.enter_context(load_model(file.path))
    second = spare > memory_estimate(file, plan) - file.file_size  # room for another KV cache and logits
    contexts = [_open_context(stack, model, plan, n_threads) for _ in range(2 if second else 1)]
    slot = _FileSlot(contexts, scores, [None] * len(contexts))
    # Unwound before the contexts: a scorer still reading their logits when an error or Ctrl-C leaves
    # the pass would otherwise read memory llama.cpp has freed.
    stack.callback(slot.settle)
    return slot


def _open_context(stack: ExitStack, model: LoadedModel, plan: WindowPlan, n_threads: int | None) -> Context:
    n_tokens = plan.windows_per_batch * plan.ctx
    return stack.enter_context(
        model.new_context(n_tokens, n_batch=n_tokens, n_threads=n_threads, n_seq_max=plan.windows_per_batch)
    )
