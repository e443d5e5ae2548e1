"""Quantized files load in llama.cpp and stay close to the f32 file; closeness grows with bits.

The KL divergence of each type's logits from the f32 file's, over every position of a prompt, is
computed directly from the logits (tests/oracles.mean_kl_divergence).  The measured values are
printed (pytest -s) for the record.
"""

from __future__ import annotations

import numpy as np
import pytest

from phiquant import api
from phiquant.runtime.llama import LoadedModel, LoadOptions
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.oracles import llama_cpp_logits, mean_kl_divergence

# The k-quant ladder from fewest to most bits per weight.
LADDER = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]


@pytest.mark.slow
def test_kl_divergence_from_f32_shrinks_as_bits_grow(
    shared_phi3_checkpoint, converted_gguf, tmp_path
) -> None:
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    result = api.quantize(checkpoint, LADDER, tmp_path)
    tokens = np.random.default_rng(3).integers(3, 32000, size=200).tolist()
    reference = llama_cpp_logits(converted_gguf(PHI35_MINI, "f32"), tokens, 256)
    divergences = {}
    for file in result.files:
        with (
            LoadedModel(file.path, LoadOptions(use_extra_bufts=False)) as model,
            model.new_context(256) as context,
        ):
            logits = context.decode(tokens, all_logits=True)
        assert np.isfinite(logits).all()
        divergences[file.type] = mean_kl_divergence(reference, logits)
    print(
        "mean KLD vs f32:",
        {k: f"{v:.2e} ({f.bits_per_weight:.2f} bpw)" for (k, v), f in zip(divergences.items(), result.files)},
    )
    values = [divergences[name] for name in LADDER]
    assert values == sorted(values, reverse=True), divergences
    assert divergences["Q8_0"] < 1e-3 and divergences["Q2_K"] > 10 * divergences["Q8_0"]


def test_kl_divergence_of_identical_logits_is_zero() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 50)).astype(np.float32)
    assert mean_kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert mean_kl_divergence(logits, logits + 3.0) == pytest.approx(0.0, abs=1e-9)  # shift-invariant
    assert mean_kl_divergence(logits, logits[::-1]) > 0
