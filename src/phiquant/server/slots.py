"""Generation slots, handed out first come, first served, in one of two modes.

Batched (the default, server.batched_slots): a slot is a lease on the batch engine (runtime.batch_engine), which decodes
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
import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from phiquant.errors import PhiquantError
from phiquant.runtime.generate import (
    MAX_SEED,
    Completion,
    SamplingOptions,
    TokenLogprob,
    generate,
    random_seed,
)
from phiquant.runtime.llama import Context
from phiquant.runtime.runner import ModelRunner
from phiquant.server.errors import server_busy

log = logging.getLogger("phiquant.server")
T = TypeVar("T")


@dataclass(frozen=True)
class ChoiceText:
    """Text one choice produced, with the log-probabilities of the tokens sampled since the last one."""

    index: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass
class GenerationJob:
    tokens: list[int]
    options: SamplingOptions
    time_limit: float  # seconds of generation before it ends with finish_reason "time"
    loop: asyncio.AbstractEventLoop
    choices: int = 1  # n: generated one after another, choice i with seed + i
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    evaluate: Callable[[Context], None] | None = None  # fills the context instead of `tokens` (images)
    release: Callable[[], None] | None = None  # frees what `evaluate` holds, once the job is over

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
        deadline = time.monotonic() + job.time_limit
        base_seed = job.options.seed
        if job.choices > 1 and base_seed is None:
            base_seed = random_seed()
        try:
            for index in range(job.choices):
                options = job.options
                if base_seed is not None:
                    options = dataclasses.replace(options, seed=(base_seed + index) % (MAX_SEED + 1))
                self._run_choice(job, index, options, deadline)
                if job.cancel.is_set():
                    break
        except PhiquantError as error:
            job.emit("error", error)
        except Exception as error:  # a bug: answer this request with a 500, keep the slot serving
            log.exception("generation failed in slot %d", self.index)
            job.emit("error", error)
        finally:
            if job.release is not None:
                job.release()

    def _run_choice(self, job: GenerationJob, index: int, options: SamplingOptions, deadline: float) -> None:
        # Each choice evaluates the prompt again in the cleared context; a shared prompt cache is the
        # batched engine's to give.
        completion = Completion()
        sent = 0
        for text in generate(
            self.context,
            job.tokens,
            options,
            self.end_ids,
            cancel=job.cancel,
            completion=completion,
            deadline=deadline,
            evaluate=job.evaluate,
        ):
            job.emit("text", ChoiceText(index, text, completion.logprobs[sent:]))
            sent = len(completion.logprobs)
        if sent < len(completion.logprobs):
            job.emit("text", ChoiceText(index, "", completion.logprobs[sent:]))
        job.emit("done", (index, completion))


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


async def job_events(job: GenerationJob) -> AsyncIterator[tuple[str, Any]]:
    """A submitted job's ("text", ChoiceText) and ("done", (index, Completion)) events, until every
    choice is done or one ("error", exception) ends it.  Whoever stops reading early must set
    job.cancel, or the slot stays busy until the job ends."""
    done = 0
    while done < job.choices:
        kind, value = await job.events.get()
        yield kind, value
        if kind == "error":
            return
        done += kind == "done"
