"""The batched slots' hand-off to the event loop: one wake-up per engine round, nothing reordered or lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from phiquant.runtime.sampling import SamplingOptions
from phiquant.server.batched_slots import RoundMail
from phiquant.server.slots import GenerationJob


def new_job(loop: asyncio.AbstractEventLoop) -> GenerationJob:
    return GenerationJob([1, 2], SamplingOptions(), 60.0, loop)


class CountingLoop:
    """An event loop's call_soon_threadsafe, counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(*args)


def test_a_round_reaches_the_loop_in_one_wakeup_in_posting_order() -> None:
    async def scenario() -> None:
        loop = CountingLoop(asyncio.get_running_loop())
        jobs = [new_job(loop) for _ in range(3)]  # type: ignore[arg-type]
        mail = RoundMail()
        freed: list[int] = []

        def engine_round() -> None:  # what the engine's thread does in one round
            for step in range(4):
                for index, job in enumerate(jobs):
                    mail.emit(job, "text", f"{index}:{step}")
            mail.emit(jobs[0], "done", 0)
            mail.post(jobs[0], freed.append, 0)
            mail.send()

        worker = threading.Thread(target=engine_round)
        worker.start()
        worker.join()
        for index, job in enumerate(jobs):
            got = [await asyncio.wait_for(job.events.get(), 5) for _ in range(4 + (index == 0))]
            expected = [("text", f"{index}:{step}") for step in range(4)] + [("done", 0)] * (index == 0)
            assert got == expected
        assert freed == [0]
        assert loop.wakeups == 1
        mail.send()  # nothing posted: no wake-up
        mail.close()
        assert loop.wakeups == 1

    asyncio.run(scenario())


def test_hand_offs_from_two_threads_keep_their_order() -> None:
    async def scenario() -> list[Any]:
        job = new_job(asyncio.get_running_loop())
        mail = RoundMail()
        barrier = threading.Barrier(2)

        def poster(name: str) -> None:
            barrier.wait()
            for i in range(200):
                mail.emit(job, "text", (name, i))
                if i % 7 == 0:
                    mail.send()
            mail.send()

        threads = [threading.Thread(target=poster, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        received = [(await asyncio.wait_for(job.events.get(), 5))[1] for _ in range(400)]
        mail.close()
        assert job.events.empty()
        return received

    received = asyncio.run(scenario())
    assert len(received) == 400
    for name in "ab":
        assert [i for n, i in received if n == name] == list(range(200))


def test_a_closed_loop_cancels_the_jobs_that_would_have_been_told() -> None:
    loop = asyncio.new_event_loop()
    other = asyncio.new_event_loop()
    gone, alive = new_job(loop), new_job(other)
    loop.close()
    mail = RoundMail()
    mail.emit(gone, "text", "x")
    mail.emit(alive, "text", "y")
    mail.close()  # hands over what is left
    assert gone.cancel.is_set()
    assert not alive.cancel.is_set()
    other.run_until_complete(asyncio.sleep(0))
    assert alive.events.get_nowait() == ("text", "y")
    other.close()
