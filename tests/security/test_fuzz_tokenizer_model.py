"""Fuzzing the SentencePiece reader: a damaged tokenizer.model (flipped, cut, inserted or deleted
bytes; protobuf lengths and counts set to boundary values; random bytes) is read or refused with a
PhiquantError naming the file, never a traceback or a crash of the protobuf or sentencepiece code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from phiquant.checkpoint.directory import open_checkpoint
from phiquant.errors import PhiquantError
from phiquant.vocab.spm import read_sentencepiece_vocabulary
from tests.fixtures.phi3_specs import PHI3_MINI_4K
from tests.security.fuzzing import accepts_or_refuses_cleanly, fuzz_settings
from tests.security.mutations import MutatedFile, mutated_bytes

VOCAB_SIZE = 32064  # Phi-3-mini's config.json vocab_size, which the fixture uses


@pytest.fixture(scope="module")
def base_checkpoint(shared_phi3_checkpoint) -> Path:
    return shared_phi3_checkpoint(PHI3_MINI_4K)


@pytest.fixture(scope="module")
def seed(base_checkpoint) -> bytes:
    return (base_checkpoint / "tokenizer.model").read_bytes()


@pytest.fixture(scope="module")
def checkpoint_copy(base_checkpoint, tmp_path_factory) -> Path:
    """The base checkpoint's files as hard links, tokenizer.model a private copy the tests overwrite."""
    directory = tmp_path_factory.mktemp("fuzz-spm") / "checkpoint"
    directory.mkdir()
    for file in base_checkpoint.iterdir():
        if file.name != "tokenizer.model":
            os.link(file, directory / file.name)
    return directory


def read_with_model(directory: Path, content: bytes) -> str:
    """Put `content` in as tokenizer.model and read the vocabulary; say what happened."""
    model_file = directory / "tokenizer.model"
    model_file.write_bytes(content)
    result = accepts_or_refuses_cleanly(
        lambda: read_sentencepiece_vocabulary(open_checkpoint(directory), VOCAB_SIZE)
    )
    if isinstance(result, PhiquantError):
        assert str(directory) in str(result)
        return f"refused: {result.message[:40]}"
    assert len(result.tokens) == VOCAB_SIZE
    return "read"


def test_the_unharmed_model_is_read(checkpoint_copy, seed) -> None:
    assert read_with_model(checkpoint_copy, seed) == "read"


# The first bytes hold the first pieces' protobuf tags and lengths, the last the trainer and normalizer
# specs; damage is aimed at both ends and anywhere.
@fuzz_settings(max_examples=150)
@given(data=st.data())
def test_damaged_tokenizer_model_is_read_or_refused_cleanly(checkpoint_copy, seed, data) -> None:
    fields = list(range(0, 64)) + list(range(len(seed) - 256, len(seed)))
    mutated: MutatedFile = data.draw(mutated_bytes(seed, fields))
    event(read_with_model(checkpoint_copy, mutated.content))


@fuzz_settings(max_examples=100)
@given(content=st.binary(max_size=512))
def test_random_bytes_as_tokenizer_model_are_refused_cleanly(checkpoint_copy, content) -> None:
    event(read_with_model(checkpoint_copy, content))
