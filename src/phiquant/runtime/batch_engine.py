"""Continuous batching: the next token of every running request and the next chunk of every waiting
prompt go through one llama_decode per step.

One llama.cpp context holds one KV sequence per slot, each in its own stream (kv_unified off), so every
sequence has the whole per-slot context and LongRoPE sees the per-slot size (llama.cpp picks the factor
set from n_ctx_seq, llama-model.cpp get_rope_factors).  One thread drives it: each step admits waiting
jobs (a new request joins at the next step), decodes one batch, samples each sequence with its own
Sampler at its own batch row, and hands text to each job's sink.  A finished or cancelled request gives
its sequence back at once; the keys and values stay, so that a later prompt starting with the same
tokens (the next turn of a conversation) evaluates only what is new.

For LongRoPE models served with a context above the original one, requests whose prompt plus
max_tokens fit the original context run in the short lane (short factors, as transformers does for
them); the others run in a long lane, a second context of one sequence created on first use.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from phiquant.errors import PhiquantError
from phiquant.runtime.batch_lane import EngineJob, JobSink, Lane, LaneStats, SequenceState
from phiquant.runtime.llama import LoadedModel

__all__ = [
    "BatchEngine",
    "EngineConfig",
    "EngineJob",
    "EngineState",
    "JobSink",
    "SequenceState",
    "lane_sizes",
]

log = logging.getLogger("phiquant.runtime")
CONTEXT_PADDING = 256  # llama.cpp rounds each sequence's context up to this (llama-context.cpp)


@dataclass(frozen=True)
class EngineConfig:
    n_sequences: int
    sequence_tokens: int  # what each sequence of the (short) lane holds
    long_sequence_tokens: int | None = None  # LongRoPE: the long lane's one sequence, made on first use
    n_batch: int = 512  # tokens per step (running sequences first, then prompt chunks)
    n_threads: int | None = None


@dataclass(frozen=True)
class EngineState:
    sequences: tuple[SequenceState, ...]
    long_sequences: tuple[SequenceState, ...]  # empty until the long lane exists
    waiting: int
    stats: LaneStats


def lane_sizes(n_ctx: int, long_rope_original: int | None) -> tuple[int, int | None]:
    """(tokens per short-lane sequence, tokens of the long lane or None).  A LongRoPE model served
    above its original context gets a short lane of the original size, so that short requests keep
    the short factors, and a long lane of `n_ctx` for the rest."""
    if long_rope_original and _padded(n_ctx) > long_rope_original:
        return max(CONTEXT_PADDING, long_rope_original // CONTEXT_PADDING * CONTEXT_PADDING), n_ctx
    return n_ctx, None


def _padded(n: int) -> int:
    return -(-n // CONTEXT_PADDING) * CONTEXT_PADDING


class BatchEngine:
    """`hand_over`, if given, is called on the engine's thread just before each llama_decode and
    before the thread waits for work: a sink that collects its calls can pass them on together at
    the moment this thread leaves the interpreter to llama.cpp for the length of a decode."""

    def __init__(
        self,
        model: LoadedModel,
        config: EngineConfig,
        end_ids: frozenset[int],
        *,
        hand_over: Callable[[], None] | None = None,
    ):
        if config.n_sequences < 1:
            raise PhiquantError(f"the engine needs at least one sequence, not {config.n_sequences}")
        self.model = model
        self.config = config
        self.end_ids = end_ids
        self._hand_over = hand_over or (lambda: None)
        self.short = self._new_lane(config.n_sequences, config.sequence_tokens)
        self.long: Lane | None = None
        self._inbox: queue.SimpleQueue[EngineJob | None] = queue.SimpleQueue()
        self._waiting: deque[EngineJob] = deque()
        self._stopping = False
        self._state_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="phiquant-batch-engine", daemon=True)
        self._thread.start()

    def _new_lane(self, n_sequences: int, tokens: int) -> Lane:
        context = self.model.new_context(
            tokens * n_sequences,
            n_batch=self.config.n_batch,
            n_threads=self.config.n_threads,
            n_seq_max=n_sequences,
        )
        return Lane(context, n_sequences, tokens, self.end_ids, before_decode=self._hand_over)

    def submit(self, job: EngineJob) -> None:
        """Queue a job; it joins the running batch at the next step that has free sequences for it."""
        if not 1 <= job.n <= self.config.n_sequences:
            raise PhiquantError(
                f"n must be in 1-{self.config.n_sequences} (the engine's sequences), not {job.n}"
            )
        if job.n > 1 and self.lane_of(len(job.tokens), job.options.max_tokens) == "long":
            raise PhiquantError("a request longer than the original context runs alone: n must be 1")
        self._inbox.put(job)

    def close(self) -> None:
        """Cancel everything, stop the thread, free the contexts."""
        self._inbox.put(None)
        self._thread.join()
        for lane in (self.short, self.long):
            if lane is not None:
                lane.context.close()

    def state(self) -> EngineState:
        with self._state_lock:
            long = self.long.sequence_states() if self.long is not None else ()
            stats = self.short.stats.plus(self.long.stats) if self.long is not None else self.short.stats
            return EngineState(self.short.sequence_states(), long, len(self._waiting), stats)

    def lane_of(self, n_prompt: int, max_tokens: int) -> str:
        """ "short" or "long": where a request of this size runs."""
        if self.config.long_sequence_tokens is None or n_prompt + max_tokens <= self.config.sequence_tokens:
            return "short"
        return "long"

    def _run(self) -> None:
        while not self._stopping:
            # Wait for work only when nothing runs and nothing waits to be admitted.
            idle = not self._busy() and not self._waiting
            if idle:
                self._hand_over()
            self._take_jobs(block=idle)
            with self._state_lock:
                self._admit()
                for lane in (self.short, self.long):
                    if lane is not None and lane.busy:
                        self._step(lane)
        for job in self._waiting:
            job.sink.error(PhiquantError("the server is stopping"))
            job.sink.released()
        self._waiting.clear()
        for lane in (self.short, self.long):
            if lane is not None:
                lane.cancel_all()
        self._hand_over()

    def _step(self, lane: Lane) -> None:
        try:
            lane.step()
        except Exception as error:  # a bug: answer these requests with a 500, keep the engine serving
            log.exception("batched decoding failed")
            lane.fail_all(error)

    def _busy(self) -> bool:
        return self.short.busy or (self.long is not None and self.long.busy)

    def _take_jobs(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
            while True:
                if item is None:
                    self._stopping = True
                    return
                self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _admit(self) -> None:
        """Start waiting jobs in arrival order; a job that does not fit its lane yet holds back the
        later jobs of that lane only."""
        blocked: set[str] = set()
        for job in list(self._waiting):
            if job.cancel.is_set():
                self._waiting.remove(job)
                job.sink.error(PhiquantError("cancelled before it started"))
                job.sink.released()
                continue
            name = self.lane_of(len(job.tokens), job.options.max_tokens)
            if name in blocked:
                continue
            lane = self._lane(name)
            if lane.free_sequences() < job.n:
                blocked.add(name)
                continue
            self._waiting.remove(job)
            try:
                lane.start(job)
            except PhiquantError as error:
                job.sink.error(error)
                job.sink.released()

    def _lane(self, name: str) -> Lane:
        if name == "short":
            return self.short
        if self.long is None:
            assert self.config.long_sequence_tokens is not None
            self.long = self._new_lane(1, self.config.long_sequence_tokens)
        return self.long
