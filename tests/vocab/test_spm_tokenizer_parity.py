"""llama.cpp tokenizes our GGUF exactly like the original tokenizer does.

Plain text: the oracle is sentencepiece itself on tokenizer.model (and the HF fast tokenizer agrees).
Chat-formatted text: the HF tokenizer, whose added tokens strip whitespace per their rstrip flags;
phiquant picks general.name so that llama.cpp's name-keyed Phi-3 rule reproduces those flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece

from phiquant.runtime.llama import LoadedModel
from tests.fixtures.phi3_specs import PHI3_MINI_128K_APRIL_2024, PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_tokenizer
from tests.fixtures.varied_text import CHAT_TEXTS, PLAIN_TEXTS

FLAVOURS = [
    pytest.param(PHI35_MINI, id="current-rstrip-flags"),
    pytest.param(PHI3_MINI_128K_APRIL_2024, id="april-2024-flags"),
]


def test_there_are_enough_varied_strings() -> None:
    assert len(PLAIN_TEXTS) >= 200 and len(CHAT_TEXTS) >= 25


@pytest.mark.parametrize("spec", FLAVOURS)
def test_plain_text_tokenizes_like_sentencepiece(spec, shared_phi3_checkpoint, converted_gguf) -> None:
    checkpoint: Path = shared_phi3_checkpoint(spec)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))
    with LoadedModel(converted_gguf(spec, "f16")) as model:
        mismatches = [
            text
            for text in PLAIN_TEXTS
            if model.tokenize(text, parse_special=False) != processor.encode(text)
        ]
    assert mismatches == []


@pytest.mark.parametrize("spec", FLAVOURS)
def test_chat_text_tokenizes_like_the_hf_tokenizer(spec, shared_phi3_checkpoint, converted_gguf) -> None:
    hf = load_transformers_tokenizer(shared_phi3_checkpoint(spec))
    with LoadedModel(converted_gguf(spec, "f16")) as model:
        mismatches = [
            (text, hf.encode(text, add_special_tokens=False), model.tokenize(text, parse_special=True))
            for text in CHAT_TEXTS
            if model.tokenize(text, parse_special=True) != hf.encode(text, add_special_tokens=False)
        ]
    assert mismatches == []


def test_special_tokens_come_out_at_their_real_ids(phi35_mini_checkpoint, converted_gguf) -> None:
    with LoadedModel(converted_gguf(PHI35_MINI, "f16")) as model:
        ids = model.tokenize("<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", parse_special=True)
    assert [i for i in ids if i >= 32000] == [32006, 32007, 32010, 32007, 32001]


def test_whitespace_after_special_tokens_differs_without_the_name_rule(
    make_phi3_checkpoint, tmp_path
) -> None:
    """Why general.name matters: with a name lacking "phi-3", llama.cpp keeps the newline that the
    HF tokenizer's rstrip flag swallows.  This is the only whitespace difference, and phiquant's
    naming removes it (test above)."""
    from phiquant import api
    from phiquant.archs.common import model_name  # noqa: F401  (documents where the name comes from)

    checkpoint = make_phi3_checkpoint(PHI35_MINI, config_overrides={"_name_or_path": "my-finetune"})
    gguf = api.convert(checkpoint, tmp_path / "m.gguf", "f16").path
    hf = load_transformers_tokenizer(checkpoint)
    text = "<|user|>\nHi<|end|>\n<|assistant|>\n"
    with LoadedModel(gguf) as model:
        assert "phi-3" in (model.metadata_value("general.name") or "").lower()
        assert model.tokenize(text, parse_special=True) == hf.encode(text, add_special_tokens=False)
