"""Generation slots, handed out first come, first served, in one of two modes.

Batched (the default): a slot is a sequence of the batch engine (runtime.batch_engine), which decodes
every running request in one llama_decode per step and reuses a cached prompt prefix.
Deterministic (`--deterministic`): each slot has its own llama.cpp context and worker thread, and a
request runs alone in it (cleared before it starts), so its tokens depend only on its own prompt and
seed, never on what other requests run beside it: batched decoding of several sequences changes
matrix shapes and with them the last bits of the logits.

Either way the text goes back to the event loop through an asyncio queue, and the slot is free again
only once its request has stopped using the context, after a finish, an error or a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from phiquant.errors import PhiquantError
from phiquant.runtime.batch_engine import BatchEngine, EngineConfig, EngineJob, lane_sizes
from phiquant.runtime.generate import Completion, SamplingOptions, generate
from phiquant.runtime.llama import Context
from phiquant.runtime.runner import ModelRunner
from phiquant.server.errors import server_busy

log = logging.getLogger("phiquant.server")
T = TypeVar("T")


@dataclass
class GenerationJob:
    tokens: list[int]
    options: SamplingOptions
    time_limit: float  # seconds of generation before it ends with finish_reason "time"
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)

    def emit(self, kind: str, value: Any) -> None:
        """Called from the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel.set()


class Slot:
    def __init__(
        self, index: int, context: Context, end_ids: frozenset[int], on_free: Callable[[Slot], None]
    ):
        self.index = index
        self.context = context
        self.end_ids = end_ids
        self.on_free = on_free
        self.current: GenerationJob | None = None
        self._jobs: queue.Queue[GenerationJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"phiquant-slot-{index}", daemon=True)
        self._thread.start()

    def submit(self, job: GenerationJob) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """Cancel what runs, finish the thread, free the context."""
        if self.current is not None:
            self.current.cancel.set()
        self._jobs.put(None)
        self._thread.join()
        self.context.close()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None
                with contextlib.suppress(RuntimeError):  # a closed event loop: the server is stopping
                    job.loop.call_soon_threadsafe(self.on_free, self)

    def _run(self, job: GenerationJob) -> None:
        completion = Completion()
        deadline = time.monotonic() + job.time_limit
        try:
            for text in generate(
                self.context,
                job.tokens,
                job.options,
                self.end_ids,
                cancel=job.cancel,
                completion=completion,
                deadline=deadline,
            ):
                job.emit("text", text)
            job.emit("done", completion)
        except PhiquantError as error:
            job.emit("error", error)
        except Exception as error:  # a bug: answer this request with a 500, keep the slot serving
            log.exception("generation failed in slot %d", self.index)
            job.emit("error", error)


class Lease:
    """A batched slot: the right to run one request in the engine (which picks the sequence)."""

    def __init__(self, index: int, engine: BatchEngine, on_free: Callable[[Lease], None]):
        self.index = index
        self.engine = engine
        self.on_free = on_free

    def submit(self, job: GenerationJob) -> None:
        self.engine.submit(
            EngineJob(
                job.tokens, job.options, _JobEvents(job, self), time_limit=job.time_limit, cancel=job.cancel
            )
        )


class _JobEvents:
    """An engine job's results as the events of a GenerationJob (one choice)."""

    def __init__(self, job: GenerationJob, lease: Lease):
        self.job = job
        self.lease = lease

    def text(self, choice: int, text: str) -> None:
        self.job.emit("text", text)

    def done(self, choice: int, completion: Completion) -> None:
        self.job.emit("done", completion)

    def error(self, error: Exception) -> None:
        self.job.emit("error", error)

    def released(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: the server is stopping
            self.job.loop.call_soon_threadsafe(self.lease.on_free, self.lease)


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class FirstComeFirstServed(Generic[T]):
    """Items handed out strictly in the order requests arrived; at most `max_queue` wait.

    A freed item goes straight to the longest waiter (not back to a pile a newcomer could grab
    first, which is how asyncio.Queue lets late arrivals overtake).  Event-loop thread only."""

    def __init__(self, items: list[T]):
        self._free: deque[T] = deque(items)
        self._waiters: deque[asyncio.Future[T]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> int:
        return len(self._free)

    async def acquire(self, *, max_queue: int, timeout: float) -> T:
        if self._free and not self._waiters:
            return self._free.popleft()
        if len(self._waiters) >= max_queue:
            raise QueueFull
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            self._give_up(waiter)
            raise QueueTimeout from None
        except BaseException:  # cancelled (the client left): leave the line, then let it propagate
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: asyncio.Future[T]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            self.release(waiter.result())  # handed over just as the waiter gave up: pass it on
        else:
            waiter.cancel()

    def release(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._free.append(item)


class RunsJobs(Protocol):
    """A slot of either kind: it runs one submitted job at a time."""

    def submit(self, job: GenerationJob) -> None: ...


class SlotPool:
    """The server's slots behind a first-come-first-served line."""

    def __init__(self, slots: Sequence[RunsJobs]):
        self.slots = slots
        self._line = FirstComeFirstServed(list(self.slots))

    @property
    def waiting(self) -> int:
        return self._line.waiting

    @property
    def idle(self) -> int:
        return self._line.idle

    async def acquire(self, *, max_queue: int, timeout: float) -> RunsJobs:
        try:
            return await self._line.acquire(max_queue=max_queue, timeout=timeout)
        except QueueFull:
            raise server_busy(
                f"all {len(self.slots)} generation slots are busy and {self.waiting} requests are already "
                "waiting (--max-queue); retry later",
                "queue_full",
                retry_after=1,
            ) from None
        except QueueTimeout:
            raise server_busy(
                f"no generation slot became free within {timeout:g} s (--queue-timeout); retry later",
                "queue_timeout",
                retry_after=timeout / 4,
            ) from None

    def release(self, slot: RunsJobs) -> None:
        """Event-loop thread only (workers call it through call_soon_threadsafe)."""
        self._line.release(slot)

    def default_room(self, n_prompt: int) -> int:
        """The most tokens a request that gives no max_tokens may generate."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class IsolatedSlotPool(SlotPool):
    """--deterministic: one context and worker thread per slot."""

    def __init__(self, runner: ModelRunner, n_slots: int, threads_per_slot: int):
        self.n_ctx = runner.n_ctx
        context = runner.new_context
        self.isolated = [
            Slot(i, context(threads=threads_per_slot), runner.end_ids, self.release) for i in range(n_slots)
        ]
        super().__init__(self.isolated)

    def default_room(self, n_prompt: int) -> int:
        return self.n_ctx - n_prompt

    def close(self) -> None:
        for slot in self.isolated:
            slot.stop()


class BatchedSlotPool(SlotPool):
    """The default: every slot's request decoded together by one engine."""

    def __init__(self, runner: ModelRunner, n_slots: int):
        short, long = lane_sizes(runner.n_ctx, runner.shape.long_rope_original_context)
        config = EngineConfig(n_slots, short, long, n_batch=runner.n_batch, n_threads=runner.threads)
        self.engine = BatchEngine(runner.model, config, runner.end_ids)
        self.n_ctx = runner.n_ctx
        super().__init__([Lease(i, self.engine, self.release) for i in range(n_slots)])

    def default_room(self, n_prompt: int) -> int:
        """A short prompt of a LongRoPE model gets the room of the original context, so that it runs
        with the short factors; a longer one the room of the whole context."""
        short = self.engine.config.sequence_tokens
        return short - n_prompt if n_prompt < short else self.n_ctx - n_prompt

    def close(self) -> None:
        self.engine.close()


async def job_events(job: GenerationJob) -> AsyncIterator[tuple[str, Any]]:
    """A submitted job's ("text", str) events, then one ("done", Completion) or ("error", exception).
    Whoever stops reading early must set job.cancel, or the slot stays busy until the job ends."""
    while True:
        kind, value = await job.events.get()
        yield kind, value
        if kind != "text":
            return
