"""One context of the batch engine: its sequences, what each holds, and one batched step.

A step puts the sampled token of every running sequence and the next prompt chunk of every sequence
still reading its prompt into one llama_decode, ordered by sequence id: llama.cpp splits a batch over
several KV streams into micro-batches of adjacent sequence ids (llama-batch.cpp split_equal), so
keeping busy sequences adjacent keeps it to one micro-batch while no prompt is read.
"""

from __future__ import annotations

import codecs
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.runtime.generate import (
    Completion,
    Sampler,
    StopStringFilter,
    TokenLogprob,
    common_prefix_length,
    token_logprob,
)
from phiquant.runtime.llama import Context
from phiquant.runtime.sampling import MAX_SEED, SamplingOptions, random_seed

log = logging.getLogger("phiquant.runtime")
# Prompt tokens evaluated again even when a sequence holds them: the last one for its logits, and one
# more because llama.cpp computes a one-token batch with other kernels than a longer one (ggml's
# vector path), so that a repeated prompt of an F16 model gets exactly the logits of a fresh one.
REEVALUATED_TOKENS = 2


class JobSink(Protocol):
    """Where a job's results go; called on the engine's thread."""

    def text(self, choice: int, text: str, logprobs: list[TokenLogprob]) -> None:
        """New text of a choice, with the log-probabilities of the tokens sampled since its last text
        (empty unless the options ask for logprobs)."""

    def done(self, choice: int, completion: Completion) -> None: ...

    def error(self, error: Exception) -> None: ...

    def released(self) -> None:
        """Every sequence of the job is free again (after the last done or error)."""


@dataclass
class EngineJob:
    tokens: Sequence[int]
    options: SamplingOptions
    sink: JobSink
    n: int = 1  # choices: the prompt is evaluated once and its keys and values copied to n sequences
    time_limit: float = math.inf  # seconds from admission; then finish_reason "time"
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class LaneStats:
    steps: int = 0
    decoded_tokens: int = 0  # every token passed to llama_decode
    prompt_tokens: int = 0  # of which prompt tokens
    mixed_steps: int = 0  # steps that decoded running sequences' tokens and prompt chunks together

    def plus(self, other: LaneStats) -> LaneStats:
        return LaneStats(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values())))


@dataclass(frozen=True)
class SequenceState:
    seq_id: int
    busy: bool
    cached_tokens: int  # what the engine believes the sequence holds
    held_tokens: int  # what llama.cpp's KV cache holds for it (llama_memory_seq_pos_max + 1)


class _RunningJob:
    def __init__(self, job: EngineJob):
        self.job = job
        self.n_running = job.n
        self.failed = False

    def finish_one(self) -> None:
        self.n_running -= 1
        if self.n_running == 0:
            self.job.sink.released()


class _Sequence:
    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.tokens: list[int] = []  # what its KV cache holds, position by position
        self.choice: _Choice | None = None


class _Choice:
    """One generation on one sequence.  A follower (choice 1.. of an n>1 job) waits until its
    leader has read the prompt, then gets a copy of the leader's keys and values."""

    def __init__(self, running: _RunningJob, index: int, sequence: _Sequence, sampler: Sampler, seed: int):
        self.running = running
        self.index = index
        self.sequence = sequence
        self.sampler = sampler
        prompt = running.job.tokens
        self.completion = Completion(prompt_tokens=len(prompt), seed=seed)
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token: int | None = None  # sampled, evaluated at the next step
        self.followers: list[_Choice] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.sent_logprobs = 0  # how many of completion.logprobs went out with text
        self.stops = StopStringFilter(running.job.options.stop)
        self.started = time.perf_counter()
        self.deadline = time.monotonic() + running.job.time_limit


class Lane:
    def __init__(
        self,
        context: Context,
        n_sequences: int,
        capacity: int,
        end_ids: frozenset[int],
        *,
        before_decode: Callable[[], None] = lambda: None,
    ):
        self.context = context
        self.before_decode = before_decode
        self.capacity = capacity  # tokens each sequence may hold
        self.end_ids = end_ids
        self.sequences = [_Sequence(i) for i in range(n_sequences)]
        self.stats = LaneStats()
        self._readers: list[_Choice] = []  # choices reading their prompt, in admission order

    @property
    def busy(self) -> bool:
        return any(s.choice is not None for s in self.sequences)

    def free_sequences(self) -> int:
        return sum(1 for s in self.sequences if s.choice is None)

    def sequence_states(self) -> tuple[SequenceState, ...]:
        return tuple(
            SequenceState(
                s.seq_id, s.choice is not None, len(s.tokens), self.context.sequence_length(s.seq_id)
            )
            for s in self.sequences
        )

    def start(self, job: EngineJob) -> None:
        """Give the job `job.n` free sequences: the first is the free one whose cache shares the
        longest prefix with the prompt, and it evaluates only the rest."""
        if len(job.tokens) >= self.capacity:
            raise PhiquantError(f"the prompt has {len(job.tokens)} tokens; a sequence holds {self.capacity}")
        samplers = [self._sampler(job.options, i) for i in range(job.n)]
        free = [s for s in self.sequences if s.choice is None]
        index, shared = best_sequence([s.tokens for s in free], job.tokens)
        sequences = [free.pop(index), *free[: job.n - 1]]
        running = _RunningJob(job)
        choices = [_Choice(running, i, s, *samplers[i]) for i, s in enumerate(sequences)]
        leader = choices[0]
        kept = max(0, min(shared, len(job.tokens) - REEVALUATED_TOKENS))
        if job.options.logprobs is not None:
            # Reported log-probabilities are those of the prompt read whole, as a fresh context reads
            # it: re-evaluating only a prompt's tail moves a quantized model's logits well past 1e-6.
            kept = 0
        self._truncate(leader.sequence, kept)
        leader.completion.cached_tokens = kept
        leader.pending = list(job.tokens[kept:])
        leader.followers = choices[1:]
        for choice in choices:
            choice.sequence.choice = choice
        self._readers.append(leader)

    def _sampler(self, options: SamplingOptions, index: int) -> tuple[Sampler, int]:
        seed = random_seed() if options.seed is None else (options.seed + index) % (MAX_SEED + 1)
        model = self.context.model
        return Sampler(options, model.n_vocab, seed, model=model), seed

    def _truncate(self, sequence: _Sequence, keep: int) -> None:
        if keep < len(sequence.tokens):
            self.context.remove_sequence_positions(sequence.seq_id, keep)
            del sequence.tokens[keep:]

    def step(self) -> None:
        """Finish what was cancelled or ran out of time, then decode one batch and sample from it."""
        now = time.monotonic()
        for sequence in self.sequences:
            choice = sequence.choice
            if choice is not None and choice.running.job.cancel.is_set():
                self._finish(choice, "cancelled")
            elif choice is not None and now > choice.deadline:
                self._finish(choice, "time")
        chunks = self._prompt_chunks()
        entries: list[tuple[int, int, int, bool]] = []
        rows: list[tuple[int, _Choice]] = []
        for sequence in self.sequences:  # by sequence id: see the module docstring
            choice = sequence.choice
            if choice is None:
                continue
            start = len(sequence.tokens)
            if choice.next_token is not None:
                rows.append((len(entries), choice))
                entries.append((choice.next_token, start, sequence.seq_id, True))
            elif id(choice) in chunks:
                chunk = chunks[id(choice)]
                ends_prompt = len(chunk) == len(choice.pending)
                for offset, token in enumerate(chunk):
                    entries.append((token, start + offset, sequence.seq_id, False))
                if ends_prompt:
                    rows.append((len(entries) - 1, choice))
                    entries[-1] = entries[-1][:3] + (True,)
        if not entries:
            return
        arrays = batch_arrays(entries)
        self.before_decode()
        try:
            self.context.decode_sequences(*arrays)
        except PhiquantError as error:
            self.fail_all(error)
            return
        self._record(entries, chunks)
        for row, choice in rows:
            self._after_logits(choice, row)

    def _prompt_chunks(self) -> dict[int, list[int]]:
        """The prompt tokens each reader evaluates this step: what the running sequences leave of
        the batch, to the readers in admission order."""
        budget = self.context.n_batch - sum(
            1 for s in self.sequences if s.choice is not None and s.choice.next_token is not None
        )
        chunks: dict[int, list[int]] = {}
        for reader in self._readers:
            if budget <= 0:
                break
            chunks[id(reader)] = reader.pending[:budget]
            budget -= len(chunks[id(reader)])
        return chunks

    def _record(self, entries: list[tuple[int, int, int, bool]], chunks: dict[int, list[int]]) -> None:
        for sequence in self.sequences:
            choice = sequence.choice
            if choice is None:
                continue
            if choice.next_token is not None:
                sequence.tokens.append(choice.next_token)
                choice.next_token = None
            elif id(choice) in chunks:
                chunk = chunks[id(choice)]
                sequence.tokens.extend(chunk)
                del choice.pending[: len(chunk)]
        n_prompt = sum(len(c) for c in chunks.values())
        self.stats = LaneStats(
            self.stats.steps + 1,
            self.stats.decoded_tokens + len(entries),
            self.stats.prompt_tokens + n_prompt,
            self.stats.mixed_steps + int(0 < n_prompt < len(entries)),
        )

    def _after_logits(self, choice: _Choice, row: int) -> None:
        if choice in self._readers and not choice.pending:
            self._readers.remove(choice)
            choice.completion.prompt_seconds = time.perf_counter() - choice.started
            for follower in choice.followers:
                self.context.copy_sequence(choice.sequence.seq_id, follower.sequence.seq_id)
                follower.sequence.tokens = list(choice.sequence.tokens)
                follower.completion.prompt_seconds = choice.completion.prompt_seconds
                self._sample(follower, row)
        self._sample(choice, row)

    def _sample(self, choice: _Choice, row: int) -> None:
        token = choice.sampler.sample(self.context, row)
        result = choice.completion
        model = self.context.model
        options = choice.running.job.options
        if token in self.end_ids or model.is_end_of_generation(token):
            result.end_token = token
            self._finish(choice, "stop")
            return
        if options.logprobs is not None:  # from the row just sampled, before the next decode
            result.logprobs.append(token_logprob(self.context, row, token, options.logprobs))
        result.tokens.append(token)
        piece = model.token_piece(token, special=token in options.preserved_tokens)
        text, hit_stop = choice.stops.push(choice.decoder.decode(piece))
        self._emit(choice, text)
        if hit_stop:
            self._finish(choice, "stop", flush=False)
        elif len(result.tokens) >= choice.running.job.options.max_tokens or (
            len(choice.sequence.tokens) + 1 >= self.capacity
        ):
            self._finish(choice, "length")
        else:
            choice.next_token = token

    def _emit(self, choice: _Choice, text: str, *, last: bool = False) -> None:
        """Text goes out with the log-probabilities not yet sent; at the end these go out alone."""
        logprobs = choice.completion.logprobs[choice.sent_logprobs :]
        if text or (last and logprobs):
            choice.completion.text += text
            choice.sent_logprobs += len(logprobs)
            choice.running.job.sink.text(choice.index, text, logprobs)

    def _finish(self, choice: _Choice, reason: str, *, flush: bool = True) -> None:
        if flush:
            tail, _ = choice.stops.push(choice.decoder.decode(b"", final=True))
            self._emit(choice, tail + choice.stops.flush())
        self._emit(choice, "", last=True)  # logprobs of tokens whose text a stop string held back
        result = choice.completion
        result.finish_reason = reason
        result.generation_seconds = time.perf_counter() - choice.started - result.prompt_seconds
        self._release(choice)
        choice.running.job.sink.done(choice.index, result)
        choice.running.finish_one()

    def _release(self, choice: _Choice) -> None:
        choice.sampler.close()
        choice.sequence.choice = None
        choice.next_token = None
        if choice in self._readers:
            self._readers.remove(choice)

    def _fail(self, job_ids: set[int], error: Exception) -> None:
        """End every choice of these jobs with an error and empty their sequences (llama.cpp may
        have evaluated part of the batch)."""
        for sequence in self.sequences:
            choice = sequence.choice
            if choice is None or id(choice.running) not in job_ids:
                continue
            self._release(choice)
            self.context.remove_sequence_positions(sequence.seq_id, 0)
            sequence.tokens = []
            if not choice.running.failed:
                choice.running.failed = True
                choice.running.job.sink.error(error)
            choice.running.finish_one()

    def fail_all(self, error: Exception) -> None:
        self._fail({id(s.choice.running) for s in self.sequences if s.choice is not None}, error)

    def cancel_all(self) -> None:
        for sequence in self.sequences:
            if sequence.choice is not None:
                self._finish(sequence.choice, "cancelled")


def best_sequence(cached: Sequence[Sequence[int]], prompt: Sequence[int]) -> tuple[int, int]:
    """(index, shared prefix length) of the cached token list that shares the longest prefix with
    `prompt`; ties go to the lowest index, which keeps busy sequences adjacent."""
    best, best_length = 0, -1
    for index, tokens in enumerate(cached):
        length = common_prefix_length(tokens, prompt)
        if length > best_length:
            best, best_length = index, length
    return best, max(best_length, 0)


def batch_arrays(
    entries: Sequence[tuple[int, int, int, bool]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, seq_ids, outputs) arrays from (token, position, seq_id, output) entries."""
    array = np.array(entries, dtype=np.int64).reshape(-1, 4)
    return (
        array[:, 0].astype(np.int32),
        array[:, 1].astype(np.int32),
        array[:, 2].astype(np.int32),
        array[:, 3].astype(np.int8),
    )
