"""Many concurrent streaming chats against one server, each checkable on its own.

Every request has its own question and seed, so its answer is known in advance (the same request
sent alone); a stream that received another request's tokens would differ from it.  Used by the
load test and by benchmarks/serve_load.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import openai

TOPICS = ["lists", "tuples", "dicts", "sets", "strings", "bytes", "files", "classes"]


@dataclass(frozen=True)
class LoadRequest:
    index: int
    messages: tuple[dict[str, str], ...]
    seed: int


@dataclass
class StreamResult:
    text: str
    finish_reason: str | None
    chunk_ids: set[str]
    completion_tokens: int


@dataclass
class RoundResult:
    results: list[StreamResult]
    seconds: float

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)


def load_requests(n: int) -> list[LoadRequest]:
    return [
        LoadRequest(
            i,
            (
                {
                    "role": "user",
                    "content": f"Question {i}: what should I know about Python {TOPICS[i % len(TOPICS)]}?",
                },
            ),
            1000 + i,
        )
        for i in range(n)
    ]


def expected_answers(
    client: openai.OpenAI, model: str, requests: list[LoadRequest], max_tokens: int
) -> list[str]:
    """Each request alone, not streamed: what its stream must say."""
    answers = []
    for request in requests:
        reply = client.chat.completions.create(
            model=model, messages=list(request.messages), seed=request.seed, max_tokens=max_tokens
        )
        answers.append(reply.choices[0].message.content or "")
    return answers


async def _stream(
    client: openai.AsyncOpenAI, model: str, request: LoadRequest, max_tokens: int
) -> StreamResult:
    stream = await client.chat.completions.create(
        model=model,
        messages=list(request.messages),
        seed=request.seed,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, ids, finish, tokens = [], set(), None, 0
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return StreamResult("".join(pieces), finish, ids, tokens)


async def _round(base_url: str, model: str, requests: list[LoadRequest], max_tokens: int) -> RoundResult:
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="not-needed", max_retries=0, timeout=600
    ) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(_stream(client, model, r, max_tokens) for r in requests))
        return RoundResult(list(results), time.perf_counter() - started)


def streaming_round(base_url: str, model: str, requests: list[LoadRequest], max_tokens: int) -> RoundResult:
    """All requests at once, streamed, from one event loop (as many connections as requests)."""
    return asyncio.run(_round(base_url, model, requests, max_tokens))
