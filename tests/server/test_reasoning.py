"""A reasoning model's <think> section is returned as `reasoning_content`, whole and streamed, and stays
inline with `--reasoning-format none`; on a fixture with Phi-4-reasoning's <think> and </think> tokens.

A random-weight model says <think> only when pushed: a logit bias makes both markers likely, and seeded
sampling then writes them at different places.  The oracle is the raw text of the same generation, taken
from /v1/completions with the Hugging Face template's prompt ids, split here by the rule llama-server
and DeepSeek's API follow: a reply that opens with <think> reasons up to the first </think>.
"""

from __future__ import annotations

import pytest

from tests.fixtures.bpe_reference import load_hf_tokenizer
from tests.fixtures.phi4_specs import PHI4_REASONING
from tests.server.server_process import running_server

THINK, END_THINK = 100280, 100281
PUSH = {"logit_bias": {str(THINK): 6, str(END_THINK): 4}, "temperature": 1.0, "max_tokens": 12}
ASK = [{"role": "user", "content": "What is 2+2?"}]
SEEDS = range(16)


@pytest.fixture(scope="module")
def reasoning_gguf(converted_bpe_gguf):
    return converted_bpe_gguf(PHI4_REASONING, "f16")


@pytest.fixture(scope="module")
def prompt_ids(shared_bpe_checkpoint):
    tokenizer = load_hf_tokenizer(shared_bpe_checkpoint(PHI4_REASONING))
    return list(
        tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def expected_split(text: str) -> tuple[str | None, str]:
    stripped = text.lstrip()
    if not stripped.startswith("<think>"):
        return None, text
    inside = stripped[len("<think>") :]
    if "</think>" not in inside:
        return inside, ""
    reasoning, _, answer = inside.partition("</think>")
    return reasoning, answer.lstrip()


def test_reasoning_is_split_from_the_answer_whole_and_streamed(
    reasoning_gguf, prompt_ids, server_cache
) -> None:
    with running_server(reasoning_gguf, "--ctx", "256", cache=server_cache) as server:
        client = server.client()
        split_both = 0
        for seed in SEEDS:
            raw = client.completions.create(model=server.model, prompt=prompt_ids, seed=seed, **PUSH)
            reasoning, answer = expected_split(raw.choices[0].text)
            reply = client.chat.completions.create(model=server.model, messages=ASK, seed=seed, **PUSH)
            message = reply.choices[0].message
            assert (getattr(message, "reasoning_content", None), message.content) == (reasoning, answer), seed
            split_both += bool(reasoning) and bool(answer)
            chunks = list(
                client.chat.completions.create(
                    model=server.model, messages=ASK, seed=seed, stream=True, **PUSH
                )
            )
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == (reasoning or "")
            assert "".join(d.content or "" for d in deltas) == answer
        assert split_both >= 1  # some seed wrote reasoning and then an answer: the split was exercised


def test_reasoning_format_none_keeps_the_section_inline(reasoning_gguf, prompt_ids, server_cache) -> None:
    with running_server(
        reasoning_gguf, "--ctx", "256", "--reasoning-format", "none", cache=server_cache
    ) as server:
        client = server.client()
        inline = 0
        for seed in SEEDS:
            raw = client.completions.create(model=server.model, prompt=prompt_ids, seed=seed, **PUSH)
            message = (
                client.chat.completions.create(model=server.model, messages=ASK, seed=seed, **PUSH)
                .choices[0]
                .message
            )
            assert (
                message.content == raw.choices[0].text and getattr(message, "reasoning_content", None) is None
            )
            inline += message.content.lstrip().startswith("<think>")
        assert inline >= 1
