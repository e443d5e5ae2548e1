"""Many concurrent streaming chats against one server, each checkable on its own.

Every request has its own question and its own length (max_tokens grows with its index, and the
caller may ban the end tokens so that each runs to its length), so its answer is known in advance
(the same request sent alone) and differs from every other; a stream that received another request's
tokens would differ from it.  Answers are greedy: batched decoding moves logits by a few 1e-4
(relative) as the batch changes, which can move a seeded draw from one token to its neighbour but not
a greedy choice unless two logits are that close.  Used by the load test and by
benchmarks/serve_load.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import openai

TOPICS = ["lists", "tuples", "dicts", "sets", "strings", "bytes", "files", "classes"]


@dataclass(frozen=True)
class LoadRequest:
    index: int
    messages: tuple[dict[str, str], ...]
    seed: int
    max_tokens: int
    logit_bias: tuple[tuple[str, float], ...] = ()

    def arguments(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": list(self.messages),
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "logit_bias": dict(self.logit_bias) or None,
        }


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


def load_requests(n: int, max_tokens: int, banned_tokens: tuple[int, ...] = ()) -> list[LoadRequest]:
    """n requests; request i generates at most max_tokens + i tokens, never one of `banned_tokens`."""
    bias = tuple((str(token), -100.0) for token in banned_tokens)
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
            max_tokens + i,
            bias,
        )
        for i in range(n)
    ]


def expected_answers(client: openai.OpenAI, model: str, requests: list[LoadRequest]) -> list[str]:
    """Each request alone, not streamed: what its stream must say."""
    answers = []
    for request in requests:
        reply = client.chat.completions.create(**request.arguments(model))
        answers.append(reply.choices[0].message.content or "")
    return answers


async def _stream(client: openai.AsyncOpenAI, model: str, request: LoadRequest) -> StreamResult:
    stream = await client.chat.completions.create(
        **request.arguments(model),
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


async def _round(base_url: str, model: str, requests: list[LoadRequest]) -> RoundResult:
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="not-needed", max_retries=0, timeout=600
    ) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(_stream(client, model, r) for r in requests))
        return RoundResult(list(results), time.perf_counter() - started)


def streaming_round(base_url: str, model: str, requests: list[LoadRequest]) -> RoundResult:
    """All requests at once, streamed, from one event loop (as many connections as requests)."""
    return asyncio.run(_round(base_url, model, requests))
