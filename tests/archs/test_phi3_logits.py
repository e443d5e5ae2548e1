"""Our GGUF of each Phi-3 fixture runs in llama.cpp like the checkpoint runs in transformers.

Prompts: short (within the original context, so LongRoPE uses its short factors), past the original
context with a context size that selects the long factors, and past the sliding window.  llama.cpp
runs Phi-3 with full attention (SWA disabled in PR #13676), so past the window the oracle is
transformers with the window turned off; a separate test pins the known divergence from the
windowed original so a future llama.cpp change is noticed.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K, PHI3_MINI_4K, PHI3_MINI_128K_APRIL_2024, PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_model
from tests.oracles import (
    llama_cpp_logits,
    normalised_mse,
    top1_agreement,
    top1_flips_are_near_ties,
    transformers_logits,
)

# NMSE bound per output type.  f32 is the bar (measured ~1e-11, top-1 always 100%); the f16 and
# bf16 bounds are what llama.cpp's F16/BF16 matrix products cost here (measured ~1e-6 and ~1e-4), with
# margin.  Random-weight fixtures have near-tied top tokens, so at f16/bf16 a few flips are allowed,
# but only where the reference itself nearly ties.
BOUNDS = {"f32": 1e-4, "f16": 1e-5, "bf16": 5e-4}

# (spec, prompt length, n_ctx): short prompts inside the original context; long ones past it
# (LongRoPE long factors: n_ctx > original) or past the 255-token sliding window.
CASES = [
    pytest.param(PHI3_MINI_4K, 48, 512, id="mini4k-short"),
    pytest.param(PHI3_MINI_4K, 400, 512, id="mini4k-past-window"),
    pytest.param(PHI35_MINI, 48, 256, id="phi35-short-factors"),
    pytest.param(PHI35_MINI, 600, 1024, id="phi35-long-factors"),
    pytest.param(PHI3_MEDIUM_4K, 48, 512, id="medium-gqa-short"),
    pytest.param(PHI3_MEDIUM_4K, 400, 512, id="medium-gqa-past-window"),
    pytest.param(PHI3_MINI_128K_APRIL_2024, 600, 1024, id="april-su-long-factors"),
]


def prompt(length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 32000, size=length).tolist()


@pytest.fixture(scope="module")
def transformers_models(shared_phi3_checkpoint):
    cache = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = load_transformers_model(shared_phi3_checkpoint(spec))
        return cache[spec]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize(("spec", "length", "n_ctx"), CASES)
def test_llama_cpp_logits_match_transformers_at_every_position(
    spec, length, n_ctx, outtype, converted_gguf, transformers_models
) -> None:
    model = transformers_models(spec)
    full_attention = model.config.sliding_window is not None and length > model.config.sliding_window
    window = model.config.sliding_window
    if full_attention:
        model.config.sliding_window = None  # llama.cpp's phi3 graph attends to the whole context
    try:
        reference = transformers_logits(model, prompt(length))
    finally:
        model.config.sliding_window = window
    ours = llama_cpp_logits(converted_gguf(spec, outtype), prompt(length), n_ctx)
    assert ours.shape == reference.shape
    assert normalised_mse(ours, reference) < BOUNDS[outtype]
    if outtype == "f32":
        assert top1_agreement(ours, reference) == 1.0
    else:
        assert top1_flips_are_near_ties(ours, reference)


@pytest.mark.slow
def test_long_factors_are_what_make_long_prompts_match(converted_gguf, transformers_models) -> None:
    """The LongRoPE proof can fail: the same long prompt with a context that selects the short
    factors disagrees with transformers (which switches to the long factors past the original)."""
    tokens = prompt(600)
    reference = transformers_logits(transformers_models(PHI35_MINI), tokens)
    gguf = converted_gguf(PHI35_MINI, "f32")
    assert normalised_mse(llama_cpp_logits(gguf, tokens, 1024), reference) < 1e-6
    # n_ctx 600 > original 256 still selects long factors; nothing <= 256 fits 600 tokens, so check
    # the other direction: a short prompt with a long-factor context disagrees with transformers.
    short = prompt(48)
    short_reference = transformers_logits(transformers_models(PHI35_MINI), short)
    assert normalised_mse(llama_cpp_logits(gguf, short, 256), short_reference) < 1e-6
    assert normalised_mse(llama_cpp_logits(gguf, short, 1024), short_reference) > 1e-4


@pytest.mark.slow
def test_llama_cpp_ignores_the_phi3_sliding_window(converted_gguf, transformers_models) -> None:
    """Documents llama.cpp's behaviour (PR #13676): past Phi-3-mini-4k's window its outputs follow
    full attention, not transformers' windowed attention.  phiquant warns about this at conversion."""
    model = transformers_models(PHI3_MINI_4K)
    tokens = prompt(400)
    windowed = transformers_logits(model, tokens)
    ours = llama_cpp_logits(converted_gguf(PHI3_MINI_4K, "f32"), tokens, 512)
    window = model.config.sliding_window
    assert normalised_mse(ours[:window], windowed[:window]) < 1e-8
    assert normalised_mse(ours[window + 1 :], windowed[window + 1 :]) > 1e-3
