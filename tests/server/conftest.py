"""A `phiquant serve` of the Phi-3.5-mini fixture, shared by a test module."""

from __future__ import annotations

import pytest

from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_tokenizer
from tests.server.server_process import running_server


@pytest.fixture(scope="module")
def server_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phiquant-cache")


@pytest.fixture(scope="module")
def phi35_gguf(converted_gguf):
    return converted_gguf(PHI35_MINI, "f16")


@pytest.fixture(scope="module")
def server(phi35_gguf, server_cache):
    """Two slots, default limits."""
    with running_server(phi35_gguf, "--parallel", "2", cache=server_cache) as running:
        yield running


@pytest.fixture(scope="module")
def hf_tokenizer(shared_phi3_checkpoint):
    """The Hugging Face tokenizer of the Phi-3.5-mini fixture: the oracle for prompts and token counts."""
    return load_transformers_tokenizer(shared_phi3_checkpoint(PHI35_MINI))
