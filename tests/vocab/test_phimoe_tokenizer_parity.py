"""Phi-3.5-MoE ships the Phi-3 SentencePiece tokenizer; llama.cpp tokenizes our phimoe GGUF exactly like it.

Plain text: sentencepiece itself on tokenizer.model.  Chat-formatted text and whole chat prompts: the
Hugging Face tokenizer of the checkpoint (its added tokens strip the whitespace after them, which
llama.cpp reproduces through general.name; see archs/phi3.py llama_cpp_model_name).
"""

from __future__ import annotations

import pytest
import sentencepiece
from transformers import AutoTokenizer

from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.prompt import PromptTokenizer
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.fixtures.varied_text import CHAT_TEXTS, PLAIN_TEXTS

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


@pytest.fixture(scope="module")
def hf_tokenizer(shared_phimoe_checkpoint):
    return AutoTokenizer.from_pretrained(shared_phimoe_checkpoint(PHI35_MOE))


@pytest.fixture(scope="module")
def gguf_path(converted_phimoe_gguf):
    return converted_phimoe_gguf(PHI35_MOE, "f16")


def test_plain_text_tokenizes_like_sentencepiece(shared_phimoe_checkpoint, gguf_path) -> None:
    assert len(PLAIN_TEXTS) >= 200
    processor = sentencepiece.SentencePieceProcessor(
        model_file=str(shared_phimoe_checkpoint(PHI35_MOE) / "tokenizer.model")
    )
    with LoadedModel(gguf_path) as model:
        mismatches = [t for t in PLAIN_TEXTS if model.tokenize(t, parse_special=False) != processor.encode(t)]
    assert mismatches == []


def test_chat_text_tokenizes_like_the_hf_tokenizer(hf_tokenizer, gguf_path) -> None:
    with LoadedModel(gguf_path) as model:
        mismatches = [
            text
            for text in CHAT_TEXTS
            if model.tokenize(text, parse_special=True) != hf_tokenizer.encode(text, add_special_tokens=False)
        ]
    assert mismatches == []


@pytest.mark.parametrize(
    "conversation", CONVERSATIONS, ids=["one-turn", "system", "multi-turn", "empty-system"]
)
def test_chat_prompt_ids_equal_apply_chat_template(conversation, hf_tokenizer, gguf_path) -> None:
    expected = hf_tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with LoadedModel(gguf_path) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf_path))
        assert prompt.render(conversation) == hf_tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        assert prompt.chat_tokens(conversation) == list(expected)


def test_end_of_generation_ids_are_generation_configs_list(gguf_path) -> None:
    """<|end|>, <|assistant|> and <|endoftext|> all end a reply (generation_config.json)."""
    with LoadedModel(gguf_path) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf_path))
        assert set(PHI35_MOE.generation_eos_token_ids) <= prompt.end_ids
        assert all(model.is_end_of_generation(i) for i in PHI35_MOE.generation_eos_token_ids)
