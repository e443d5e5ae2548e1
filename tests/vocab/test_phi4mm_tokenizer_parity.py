"""The --text-only GGUF of Phi-4-multimodal tokenizes like the checkpoint's own tokenizer.

Oracles: the `tokenizers` library on tokenizer.json and transformers' AutoTokenizer, which agree on every
string here.  Two layouts of the image/audio placeholders: as reserved names of the o200k vocabulary only
(the stored tokenizer_config.json of the real repository lists no added token for them), and as added
special tokens at 200010/200011 (docs/phi_model_files.md §10).  Plain text goes through llama.cpp's tokenizer
(text with combining marks left out: llama.cpp's gpt-4o pre-tokenizer limitation, pinned in
test_bpe_tokenizer_parity.py); text holding added tokens through phiquant's prompt tokenizer.
"""

from __future__ import annotations

import unicodedata

import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.prompt import PromptTokenizer
from tests.fixtures.bpe_chat_texts import PHI4_MINI_CHAT_TEXTS
from tests.fixtures.bpe_reference import load_tokenizer_json
from tests.fixtures.phi4mm_checkpoints import (
    AUDIO_TOKEN_ID,
    IMAGE_TOKEN_ID,
    PHI4_MULTIMODAL,
    PHI4_MULTIMODAL_PLACEHOLDERS,
)
from tests.fixtures.phi4mm_reference import load_hf_tokenizer
from tests.fixtures.varied_text import PLAIN_TEXTS

SPECS = [
    pytest.param(PHI4_MULTIMODAL, id="placeholders-in-vocab"),
    pytest.param(PHI4_MULTIMODAL_PLACEHOLDERS, id="placeholders-added"),
]
PLACEHOLDER_TEXTS = (
    "<|user|><|endoftext10|>Describe the image.<|end|><|assistant|>",
    "<|user|><|endoftext11|><|endoftext11|>Transcribe.<|end|><|assistant|>",
    "<|image_1|> and <|audio_1|> as the processor's prompt writes them",
    "x<|endoftext10|>y <|endoftext11|> z",
)


def has_combining_mark(text: str) -> bool:
    return any(unicodedata.category(character).startswith("M") for character in text)


def expected_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("spec", SPECS)
def test_plain_text_tokenizes_like_the_original_tokenizer(
    spec, shared_phi4mm_checkpoint, converted_phi4mm_gguf
) -> None:
    checkpoint = shared_phi4mm_checkpoint(spec)
    reference, hf = load_tokenizer_json(checkpoint), load_hf_tokenizer(checkpoint)
    added = [token.content for token in reference.get_added_tokens_decoder().values()]
    plain = [t for t in PLAIN_TEXTS if not has_combining_mark(t) and not any(a in t for a in added)]
    assert len(plain) >= 200
    assert [t for t in plain if hf.encode(t, add_special_tokens=False) != expected_ids(reference, t)] == []
    with LoadedModel(converted_phi4mm_gguf(spec, "f16")) as model:
        assert [
            t for t in plain if model.tokenize(t, parse_special=False) != expected_ids(reference, t)
        ] == []


@pytest.mark.parametrize("spec", SPECS)
def test_chat_and_placeholder_text_tokenizes_like_hugging_face(
    spec, shared_phi4mm_checkpoint, converted_phi4mm_gguf
) -> None:
    checkpoint = shared_phi4mm_checkpoint(spec)
    reference, hf = load_tokenizer_json(checkpoint), load_hf_tokenizer(checkpoint)
    texts = [t for t in PHI4_MINI_CHAT_TEXTS + PLACEHOLDER_TEXTS if not has_combining_mark(t)]
    assert [t for t in texts if hf.encode(t, add_special_tokens=False) != expected_ids(reference, t)] == []
    placeholder_ids = {IMAGE_TOKEN_ID, AUDIO_TOKEN_ID}
    found = {i for t in PLACEHOLDER_TEXTS for i in expected_ids(reference, t)} & placeholder_ids
    # Added, the placeholders are matched as single tokens; only in the vocabulary, they are plain text.
    assert found == (placeholder_ids if spec.placeholders_added else set())
    gguf = converted_phi4mm_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert [
            (t, prompt.tokenize(t)) for t in texts if prompt.tokenize(t) != expected_ids(reference, t)
        ] == []
        assert model.token_text(IMAGE_TOKEN_ID) == "<|endoftext10|>"
        assert model.token_text(AUDIO_TOKEN_ID) == "<|endoftext11|>"
