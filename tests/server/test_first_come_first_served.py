"""The waiting line in front of the slots: strict arrival order, bounded, and nothing lost on give-up."""

from __future__ import annotations

import asyncio

import pytest

from phiquant.server.slots import FirstComeFirstServed, QueueFull, QueueTimeout


def run(coroutine):
    return asyncio.run(coroutine)


def test_freed_items_go_to_waiters_in_arrival_order_even_past_newcomers() -> None:
    async def scenario() -> list[str]:
        line = FirstComeFirstServed(["slot"])
        held = await line.acquire(max_queue=10, timeout=5)
        served: list[str] = []

        async def request(name: str) -> None:
            item = await line.acquire(max_queue=10, timeout=5)
            served.append(name)
            await asyncio.sleep(0)
            line.release(item)

        tasks = [asyncio.create_task(request(name)) for name in "abc"]
        await asyncio.sleep(0.01)
        assert line.waiting == 3
        line.release(held)
        late = asyncio.create_task(request("late"))  # arrives after the release: must not jump the line
        await asyncio.gather(*tasks, late)
        return served

    assert run(scenario()) == ["a", "b", "c", "late"]


def test_the_line_is_bounded() -> None:
    async def scenario() -> None:
        line = FirstComeFirstServed(["slot"])
        await line.acquire(max_queue=1, timeout=5)
        waiting = asyncio.create_task(line.acquire(max_queue=1, timeout=5))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await line.acquire(max_queue=1, timeout=5)
        waiting.cancel()

    run(scenario())


def test_a_waiter_that_times_out_leaves_the_line() -> None:
    async def scenario() -> None:
        line = FirstComeFirstServed(["slot"])
        held = await line.acquire(max_queue=5, timeout=5)
        with pytest.raises(QueueTimeout):
            await line.acquire(max_queue=5, timeout=0.05)
        assert line.waiting == 0
        line.release(held)
        assert line.idle == 1

    run(scenario())


def test_an_item_handed_to_a_waiter_that_is_cancelled_is_not_lost() -> None:
    async def scenario() -> None:
        line = FirstComeFirstServed(["slot"])
        held = await line.acquire(max_queue=5, timeout=5)
        first = asyncio.create_task(line.acquire(max_queue=5, timeout=5))
        second = asyncio.create_task(line.acquire(max_queue=5, timeout=5))
        await asyncio.sleep(0.01)
        line.release(held)  # handed to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        try:
            got = await first  # asyncio may still deliver the result (wait_for's race); then it is ours
        except asyncio.CancelledError:
            got = None
        if got is not None:
            line.release(got)
        assert await asyncio.wait_for(second, 1) == "slot"
        assert line.waiting == 0

    run(scenario())
