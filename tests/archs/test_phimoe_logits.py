"""Our GGUF of the Phi-3.5-MoE fixture runs in llama.cpp like the checkpoint runs in transformers --
except for the one difference no GGUF can remove: the router.

transformers routes with sparsemixer; in eval mode (modeling_phimoe.py, `sparsemixer`) it takes the
top expert by logit and weights it by a softmax over only the experts whose logits lie within a relative
distance 2 * router_jitter_noise (0.02) of it:

    mask_logits_threshold, max_ind = scores.max(dim=-1, keepdim=True)
    factor = scores.abs().clamp(min=mask_logits_threshold)
    mask_logits_threshold = ((mask_logits_threshold - scores) / factor) > (2 * jitter_eps)
    masked_gates = torch.softmax(scores.masked_fill(mask_logits_threshold, float("-inf")), dim=-1)
    multiplier_o = masked_gates.gather(dim=-1, index=max_ind)

then does the same for the second expert with the first one's score set to -inf.  Each weight is
usually 1.0 (no other expert within 2 %), and the two do not sum to 1.  llama.cpp's phimoe graph
(src/models/phi3.cpp) calls build_moe_ffn with norm_w = true and LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
(src/llama-graph.cpp):

    probs = ggml_soft_max(ctx0, logits);                                  // over all 16 experts
    selected_experts = ggml_argsort_top_k(ctx0, selection_probs, n_expert_used);
    weights = ggml_get_rows(ctx0, probs, selected_experts);
    weights = ggml_div(ctx0, weights, weights_sum);                       // the two sum to 1

The same two experts are chosen; their weights differ (about 2x in sum), and llama.cpp reads no GGUF
key that changes this for phimoe.  So:

* against transformers as is, the logits differ a lot on this random-weight fixture (measured NMSE
  0.79 short / 0.90 long, top-1 agreement 8 % / 2 %); how large the gap is on the real weights, whose
  routers were trained with sparsemixer, is not measured here;
* against transformers with its router replaced by llama.cpp's (softmax top-2, renormalised; a test-only
  patch), they agree to f32 precision at every position (measured NMSE 9e-13 short, 3e-11 long), which
  proves the conversion itself: tensor stacking, biases, the LayerNorm centring, LongRoPE and mscale;
* without phiquant's centring of the residual-stream writers (archs/phimoe.py), llama.cpp's RMS norms
  differ from PhiMoE's LayerNorms (measured NMSE 0.30 / 0.35 even with the softmax router).

The oracle also fixes a transformers 5.24 bug that makes PhiMoE ignore its long LongRoPE factors
(tests/fixtures/phimoe_reference.py); the last test pins that bug, so a transformers fix is noticed.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from phiquant import api
from phiquant.archs import phimoe
from tests.fixtures.phimoe_reference import load_phimoe_model, route_with_softmax_top2
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.oracles import (
    llama_cpp_logits,
    normalised_mse,
    top1_agreement,
    top1_flips_are_near_ties,
    transformers_logits,
)

# (prompt length, n_ctx): inside the original context of 256 (short factors), and past it with a
# context that makes llama.cpp use the long factors, as transformers does past 256 tokens.
SHORT, LONG = (48, 256), (600, 1024)
PROMPTS = [pytest.param(*SHORT, id="short-factors"), pytest.param(*LONG, id="long-factors")]


def prompt(length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 32000, size=length).tolist()


@pytest.fixture(scope="module")
def transformers_models(shared_phimoe_checkpoint):
    cache = {}

    def get(router: str):
        if router not in cache:
            cache[router] = load_phimoe_model(shared_phimoe_checkpoint(PHI35_MOE), router=router)
        return cache[router]

    return get


@pytest.fixture(scope="module")
def uncentred_gguf(shared_phimoe_checkpoint, tmp_path_factory):
    """The same conversion with the centring switched off (only while this file is written)."""
    path = tmp_path_factory.mktemp("uncentred") / "model.gguf"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phimoe, "build", functools.partial(phimoe.build, centre_residual_writers=False))
        return api.convert(shared_phimoe_checkpoint(PHI35_MOE), path, "f32").path


@pytest.mark.slow
@pytest.mark.parametrize(("length", "n_ctx"), PROMPTS)
def test_f32_logits_match_transformers_with_llama_cpp_router_at_every_position(
    length, n_ctx, converted_phimoe_gguf, transformers_models
) -> None:
    reference = transformers_logits(transformers_models("softmax"), prompt(length))
    ours = llama_cpp_logits(converted_phimoe_gguf(PHI35_MOE, "f32"), prompt(length), n_ctx)
    assert ours.shape == reference.shape
    assert normalised_mse(ours, reference) < 1e-4
    per_position = ((ours - reference) ** 2).mean(-1) / (reference**2).mean(-1)
    assert float(per_position.max()) < 1e-4  # every position, not just on average
    assert top1_agreement(ours, reference) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("length", "n_ctx"), PROMPTS)
def test_f16_logits_match_transformers_with_llama_cpp_router(
    length, n_ctx, converted_phimoe_gguf, transformers_models
) -> None:
    """F16 matrix products cost about 1e-6 here (measured 9e-7 / 1.2e-6)."""
    reference = transformers_logits(transformers_models("softmax"), prompt(length))
    ours = llama_cpp_logits(converted_phimoe_gguf(PHI35_MOE, "f16"), prompt(length), n_ctx)
    assert normalised_mse(ours, reference) < 1e-5
    assert top1_flips_are_near_ties(ours, reference)


@pytest.mark.slow
@pytest.mark.parametrize(("length", "n_ctx"), PROMPTS)
def test_logits_differ_from_transformers_sparsemixer_routing(
    length, n_ctx, converted_phimoe_gguf, transformers_models
) -> None:
    """The known, unfixable difference (module docstring), measured so a change is noticed: if
    llama.cpp ever routes PhiMoE like sparsemixer, this fails and the router patch can go."""
    reference = transformers_logits(transformers_models("sparsemixer"), prompt(length))
    ours = llama_cpp_logits(converted_phimoe_gguf(PHI35_MOE, "f32"), prompt(length), n_ctx)
    assert normalised_mse(ours, reference) > 0.1
    assert top1_agreement(ours, reference) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize(("length", "n_ctx"), PROMPTS)
def test_without_centring_rms_norms_differ_from_layer_norms(
    length, n_ctx, uncentred_gguf, transformers_models
) -> None:
    """Why archs/phimoe.py centres the residual-stream writers: llama.cpp runs PhiMoE's LayerNorms
    as RMS norms, and without centring that alone moves the logits far from the original."""
    reference = transformers_logits(transformers_models("softmax"), prompt(length))
    ours = llama_cpp_logits(uncentred_gguf, prompt(length), n_ctx)
    assert normalised_mse(ours, reference) > 1e-2


def test_transformers_5_24_phimoe_ignores_its_long_factors(shared_phimoe_checkpoint) -> None:
    """The oracle's LongRoPE fix is needed: unpatched, transformers' PhiMoE rotary embedding uses the
    short factors even past the original context.  When transformers fixes this, this test fails and
    `switch_longrope_factors` can go."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(shared_phimoe_checkpoint(PHI35_MOE), dtype=torch.float32)
    rotary = model.model.rotary_emb
    positions = torch.arange(600)[None]
    cos, _ = rotary(torch.zeros(1), positions)
    base = 1.0 / PHI35_MOE.rope_theta ** (torch.arange(0, PHI35_MOE.head_dim, 2).float() / PHI35_MOE.head_dim)
    short = base / torch.tensor(PHI35_MOE.rope_scaling.short_factor)
    long = base / torch.tensor(PHI35_MOE.rope_scaling.long_factor)

    def expected_cos(inverse_frequencies: torch.Tensor) -> torch.Tensor:
        angles = positions[0, :, None].float() * inverse_frequencies
        return torch.cat((angles, angles), dim=-1).cos() * PHI35_MOE.rope_scaling.long_mscale

    torch.testing.assert_close(cos[0], expected_cos(short), rtol=0, atol=1e-4)
    assert (cos[0] - expected_cos(long)).abs().max() > 0.1
    # ... while the buffer its own longrope_frequency_update selected holds the long ones.
    assert torch.allclose(rotary.inv_freq, long, rtol=1e-5)


def test_softmax_router_patch_reproduces_llama_cpp_weights(shared_phimoe_checkpoint) -> None:
    """The test-only router picks the same experts as sparsemixer and renormalises their softmax
    weights to sum to 1, as build_moe_ffn does."""
    model = load_phimoe_model(shared_phimoe_checkpoint(PHI35_MOE), router="sparsemixer")
    router = model.model.layers[0].mlp.router
    hidden = torch.randn(64, PHI35_MOE.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, sparsemixer_weights, sparsemixer_experts = router(hidden)
        route_with_softmax_top2(model)
        _, weights, experts = router(hidden)
    assert torch.equal(experts, sparsemixer_experts)
    probabilities = torch.softmax(logits, dim=-1).gather(-1, experts)
    torch.testing.assert_close(weights, probabilities / probabilities.sum(-1, keepdim=True))
    torch.testing.assert_close(weights.sum(-1), torch.ones(64))
    assert sparsemixer_weights.sum(-1).mean() > 1.5  # near 1 each: the difference being measured
