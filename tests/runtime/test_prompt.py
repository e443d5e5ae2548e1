"""phiquant's prompt building gives exactly the HF tokenizer's ids for chat prompts."""

from __future__ import annotations

import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.prompt import PromptTokenizer, SpecialTokenMatcher
from tests.fixtures.phi3_specs import ALL_PHI3_SPECS
from tests.fixtures.transformers_reference import load_transformers_tokenizer
from tests.fixtures.varied_text import CHAT_TEXTS

CONVERSATIONS = [
    [{"role": "user", "content": "Can you introduce .NET"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi  there\n\nfriend"}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": " 4 "},
        {"role": "user", "content": "\tand 3+3?\n"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "日本語 and emoji 😀"}],
]


@pytest.mark.parametrize("spec", list(ALL_PHI3_SPECS.values()), ids=list(ALL_PHI3_SPECS))
@pytest.mark.parametrize(
    "conversation", CONVERSATIONS, ids=["one-turn", "system", "multi-turn", "empty-system"]
)
def test_chat_prompt_ids_equal_apply_chat_template(
    spec, conversation, shared_phi3_checkpoint, converted_gguf
) -> None:
    hf = load_transformers_tokenizer(shared_phi3_checkpoint(spec))
    expected = hf.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    gguf = converted_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert prompt.render(conversation) == hf.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        assert prompt.chat_tokens(conversation) == list(expected)


@pytest.mark.parametrize("spec", list(ALL_PHI3_SPECS.values()), ids=list(ALL_PHI3_SPECS))
def test_prompt_tokenizer_matches_hf_on_every_chat_string(
    spec, shared_phi3_checkpoint, converted_gguf
) -> None:
    hf = load_transformers_tokenizer(shared_phi3_checkpoint(spec))
    gguf = converted_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert [t for t in CHAT_TEXTS if prompt.tokenize(t) != hf.encode(t, add_special_tokens=False)] == []


def test_special_token_matcher_strips_only_where_flags_say() -> None:
    matcher = SpecialTokenMatcher({"<a>": 1, "<b>": 2}, frozenset({2}), frozenset({1}), None)
    import re

    matcher = SpecialTokenMatcher(matcher.ids, matcher.lstrip, matcher.rstrip, re.compile("<a>|<b>"))
    assert matcher.split("x <a>  y  <b> z") == ["x ", 1, "y", 2, " z"]
    assert matcher.split("<a>\n") == [1]
    assert matcher.split("plain") == ["plain"]
