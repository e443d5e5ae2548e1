"""Loading keeps llama.cpp's extra CPU buffer types where they work and drops them where they crash."""

from __future__ import annotations

import json
import sys

import pytest

from phiquant import api
from phiquant.cache import RUNTIME_PROBE, sub_cache
from phiquant.runtime import loader
from tests.fixtures.phi3_specs import PHI3_MINI_4K


@pytest.fixture
def quantized(shared_phi3_checkpoint, tmp_path):
    out = tmp_path / "q4"
    return api.quantize(shared_phi3_checkpoint(PHI3_MINI_4K), "Q4_0", out).files[0].path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(loader.ENV_OVERRIDE, raising=False)


def test_a_probe_that_survives_keeps_the_fast_paths_and_is_cached(quantized) -> None:
    verdict = loader.decide_extra_bufts(quantized)
    assert verdict.use_extra_bufts and verdict.reason == "probe passed"
    assert loader.decide_extra_bufts(quantized).reason == "cached probe"
    with loader.load_model(quantized) as model, model.new_context(64) as context:
        assert context.decode([1, 2, 3]).shape == (1, model.n_vocab)


def test_a_probe_that_crashes_turns_extra_buffers_off_and_loading_still_works(quantized, monkeypatch) -> None:
    # The child dies with SIGSEGV, as the AMX kernels do.
    crashing_child = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(loader, "probe_command", lambda path: crashing_child)
    verdict = loader.decide_extra_bufts(quantized)
    assert not verdict.use_extra_bufts and "SIGSEGV" in verdict.reason
    cache = json.loads((sub_cache(RUNTIME_PROBE) / "verdicts.json").read_text())
    assert list(cache.values()) == [False]
    model = loader.load_model(quantized)
    try:
        assert model.options.use_extra_bufts is False
        with model.new_context(64) as context:
            assert context.decode([1, 2, 3]).shape == (1, model.n_vocab)
    finally:
        model.close()


def test_unquantized_models_need_no_probe(converted_gguf) -> None:
    assert loader.decide_extra_bufts(converted_gguf(PHI3_MINI_4K, "f16")).reason == "unquantized model"


def test_environment_override_wins(quantized, monkeypatch) -> None:
    monkeypatch.setenv(loader.ENV_OVERRIDE, "0")
    assert loader.decide_extra_bufts(quantized).use_extra_bufts is False
