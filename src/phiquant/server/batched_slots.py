"""The default slots: leases on the batch engine (runtime.batch_engine), which decodes every running
request in one llama_decode per step.  A request with images runs in a context of its own instead,
one at a time: libmtmd evaluates an image prompt into a whole context, not into one sequence of a
batch.

What the engine's thread produces in a step (every running request's new text, finished requests,
freed slots) reaches the event loop in one hand-off just before the thread's next llama_decode, not
one per request: each hand-off wakes the loop, and a loop woken while the engine's thread samples and
prepares the next batch takes the interpreter lock from it between its calls into llama.cpp, which
delays the next decode.  Handed over as the decode begins, the loop's work runs while the engine's
thread needs no lock."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.runtime.batch_engine import BatchEngine, EngineConfig, EngineJob, lane_sizes
from phiquant.runtime.generate import MAX_SEED, Completion, TokenLogprob, random_seed
from phiquant.runtime.runner import ModelRunner
from phiquant.server.slots import ChoiceText, GenerationJob, Slot, SlotPool


class RoundMail:
    """Calls for the event loop, collected on the engine's thread and handed over together, in the
    order they were posted, by a thread of its own that `send` wakes.

    The hand-off wakes the loop, and a woken loop waits for the interpreter lock.  Made by the
    engine's thread in the instants before its llama_decode, it let the loop take the lock there and
    hold it through its work while the decode waited.  `send` only wakes the postman without
    letting go of the lock, so the postman (and after it the loop) runs once the engine's thread has
    left the lock to llama.cpp for the decode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[GenerationJob, Callable[..., None], tuple[Any, ...]]] = []
        self._ring = threading.Event()
        self._closing = False
        self._postman = threading.Thread(target=self._deliver, name="phiquant-round-mail", daemon=True)
        self._postman.start()

    def post(self, job: GenerationJob, call: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._calls.append((job, call, args))

    def emit(self, job: GenerationJob, kind: str, value: Any) -> None:
        """GenerationJob.emit, at the next `send`."""
        self.post(job, job.events.put_nowait, (kind, value))

    def send(self) -> None:
        """Hand over what was posted so far (soon, from the postman's thread)."""
        self._ring.set()

    def close(self) -> None:
        """Hand over what is left, then stop the postman."""
        self._closing = True
        self._ring.set()
        self._postman.join()

    def _deliver(self) -> None:
        while True:
            self._ring.wait()
            self._ring.clear()
            self._hand_over()
            if self._closing:
                self._hand_over()
                return

    def _hand_over(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}
        for job, call, args in calls:
            by_loop.setdefault(job.loop, []).append((call, args))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_run_calls, batch)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                for job, _, _ in calls:
                    if job.loop is loop:
                        job.cancel.set()


def _run_calls(calls: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for call, args in calls:
        call(*args)


class Lease:
    """A batched slot: the right to run one request in the engine (which picks the sequences).
    A request with images runs in the pool's image slot instead (see BatchedSlotPool)."""

    def __init__(
        self,
        index: int,
        engine: BatchEngine,
        mail: RoundMail,
        on_free: Callable[[Lease], None],
        run_alone: Callable[[GenerationJob, Lease], None],
    ):
        self.index = index
        self.engine = engine
        self.mail = mail
        self.on_free = on_free
        self.run_alone = run_alone

    def submit(self, job: GenerationJob) -> None:
        if job.evaluate is not None:
            self.run_alone(job, self)
            return
        _JobEvents(job, self).next_wave()


class _JobEvents:
    """An engine job's results as the events of a GenerationJob.  A request with more choices than
    the engine has sequences runs in waves of at most that many (choice i always with seed + i)."""

    def __init__(self, job: GenerationJob, lease: Lease):
        self.job = job
        self.lease = lease
        self.base_seed = job.options.seed
        if job.choices > 1 and self.base_seed is None:
            self.base_seed = random_seed()
        self.first = 0  # the index of the current wave's first choice
        self.size = 0
        self.failed = False

    def next_wave(self) -> None:
        engine = self.lease.engine
        self.first += self.size
        side_by_side = engine.config.n_sequences
        if engine.lane_of(len(self.job.tokens), self.job.options.max_tokens) == "long":
            side_by_side = 1  # the long lane has one sequence
        self.size = min(self.job.choices - self.first, side_by_side)
        options = self.job.options
        if self.base_seed is not None:
            options = dataclasses.replace(options, seed=(self.base_seed + self.first) % (MAX_SEED + 1))
        try:
            engine.submit(
                EngineJob(
                    self.job.tokens, options, self, n=self.size, time_limit=self.job.time_limit,
                    cancel=self.job.cancel,
                )
            )  # fmt: skip
        except PhiquantError as error:  # refused before it started
            self.error(error)
            self.released()
            self.lease.mail.send()  # not posted by the engine: no round will send it

    def text(self, choice: int, text: str, logprobs: list[TokenLogprob]) -> None:
        self.lease.mail.emit(self.job, "text", ChoiceText(self.first + choice, text, logprobs))

    def done(self, choice: int, completion: Completion) -> None:
        self.lease.mail.emit(self.job, "done", (self.first + choice, completion))

    def error(self, error: Exception) -> None:
        self.failed = True
        self.lease.mail.emit(self.job, "error", error)

    def released(self) -> None:
        if not self.failed and not self.job.cancel.is_set() and self.first + self.size < self.job.choices:
            self.next_wave()
            return
        self.lease.mail.post(self.job, self.lease.on_free, self.lease)


class BatchedSlotPool(SlotPool):
    """The default: every slot's request decoded together by one engine."""

    def __init__(self, runner: ModelRunner, n_slots: int):
        short, long = lane_sizes(runner.n_ctx, runner.shape.long_rope_original_context)
        config = EngineConfig(n_slots, short, long, n_batch=runner.n_batch, n_threads=runner.threads)
        self.mail = RoundMail()
        self.engine = BatchEngine(runner.model, config, runner.end_ids, hand_over=self.mail.send)
        self.runner = runner
        self.n_ctx = runner.n_ctx
        # Requests with images run one at a time in a context of their own (made on first use):
        # libmtmd evaluates an image prompt into a whole context, not into one sequence of the batch.
        self._image_slot: Slot | None = None
        self._image_leases: deque[Lease] = deque()
        super().__init__(
            [Lease(i, self.engine, self.mail, self.release, self._run_alone) for i in range(n_slots)]
        )

    def _run_alone(self, job: GenerationJob, lease: Lease) -> None:
        """Event-loop thread: hands a job with images to the image slot; its lease is freed when
        that job is over (the slot runs its jobs in the order they came)."""
        if self._image_slot is None:
            context = self.runner.new_context(threads=self.runner.threads)
            self._image_slot = Slot(-1, context, self.runner.end_ids, self._image_job_over)
        self._image_leases.append(lease)
        self._image_slot.submit(job)

    def _image_job_over(self, slot: Slot) -> None:
        self.release(self._image_leases.popleft())

    def default_room(self, n_prompt: int) -> int:
        """A short prompt of a LongRoPE model gets the room of the original context, so that it runs
        with the short factors; a longer one the room of the whole context."""
        short = self.engine.config.sequence_tokens
        return short - n_prompt if n_prompt < short else self.n_ctx - n_prompt

    def close(self) -> None:
        self.engine.close()
        self.mail.close()
        if self._image_slot is not None:
            self._image_slot.stop()
