"""Batched serving through the official client: reused prompt prefixes are reported as OpenAI's
usage.prompt_tokens_details.cached_tokens, and --deterministic still serves from isolated slots."""

from __future__ import annotations

import pytest

from tests.server.server_process import running_server

FIRST = list(range(1000, 1040))  # token ids: a prompt no other request of this module starts with
USER_ID = 32010  # <|user|>: a control token the greedy continuation of FIRST does not produce


def cached(reply) -> int:
    return reply.usage.prompt_tokens_details.cached_tokens


def test_a_prompt_that_continues_a_cached_one_reports_the_cached_tokens(server) -> None:
    client = server.client()
    options = {"model": server.model, "max_tokens": 3, "temperature": 0}
    first = client.completions.create(prompt=FIRST, **options)
    assert cached(first) == 0 and first.usage.prompt_tokens == len(FIRST)
    longer = FIRST + [USER_ID] + list(range(2000, 2010))
    second = client.completions.create(prompt=longer, **options)
    assert (cached(second), second.usage.prompt_tokens) == (len(FIRST), len(longer))
    # The same prompt again: all but the last two tokens come from the cache (see REEVALUATED_TOKENS).
    again = client.completions.create(prompt=longer, **options)
    assert cached(again) == len(longer) - 2
    assert again.choices[0].text == second.choices[0].text


def test_the_next_chat_turn_reuses_the_conversation_so_far(server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "Can you introduce .NET"}]
    first = client.chat.completions.create(model=server.model, messages=messages, max_tokens=8, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And Python?"},
    ]
    second = client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=8, temperature=0
    )
    assert cached(second) >= first.usage.prompt_tokens


@pytest.fixture(scope="module")
def deterministic(phi35_gguf, server_cache):
    with running_server(phi35_gguf, "--parallel", "2", "--deterministic", cache=server_cache) as running:
        yield running


def test_deterministic_slots_answer_like_the_batched_server_and_cache_nothing(server, deterministic) -> None:
    options = {"max_tokens": 12, "temperature": 0, "prompt": FIRST}
    batched = server.client().completions.create(model=server.model, **options)
    isolated = deterministic.client().completions.create(model=deterministic.model, **options)
    again = deterministic.client().completions.create(model=deterministic.model, **options)
    assert isolated.choices[0].text == batched.choices[0].text == again.choices[0].text
    assert cached(isolated) == cached(again) == 0
    assert deterministic.health()["slots"]["total"] == 2
