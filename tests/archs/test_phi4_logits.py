"""Our phi3 GGUF of phi-4 (14B layout) and Phi-4-mini runs in llama.cpp like the checkpoint runs in
transformers' Phi3ForCausalLM, at every position of a short and a long prompt.

phi-4: sliding_window null (written as 0: full attention, as transformers runs it), rope_theta 250000,
GQA 4:1, untied head over the full 100352-entry vocabulary.  Phi-4-mini: partial rotary (48 of 64 head
dimensions, llama.cpp's NEOX rope leaves the rest alone as transformers does), tied embeddings (no
output.weight: llama.cpp reuses token_embd), LongRoPE with identical long and short factor lists and the
attention factor, 200064 logits per position.  The long Phi-4-mini prompt runs past the original context
with a context size that selects llama.cpp's long factors.
"""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.archs.common import float32_tensor
from phiquant.gguf_io import read_gguf
from phiquant.workflows.job import open_source
from tests.fixtures.bpe_reference import load_reference_model
from tests.fixtures.model_variants import write_variant
from tests.fixtures.phi4_specs import PHI4, PHI4_MINI
from tests.oracles import (
    llama_cpp_logits,
    normalised_mse,
    top1_agreement,
    top1_flips_are_near_ties,
    transformers_logits,
)

# f32: the bar (measured about 1e-12, top-1 100%); f16 and bf16 as for Phi-3 (matrix products in
# F16/BF16 cost about 1e-6 and 1e-4), with margin.
BOUNDS = {"f32": 1e-4, "f16": 1e-5, "bf16": 5e-4}

# (spec, prompt length, n_ctx)
CASES = [
    pytest.param(PHI4, 48, 1024, id="phi4-short"),
    pytest.param(PHI4, 600, 1024, id="phi4-long"),
    pytest.param(PHI4_MINI, 48, 256, id="mini-short-factors"),
    pytest.param(PHI4_MINI, 300, 512, id="mini-past-original-context"),
]


def prompt(spec, length: int, seed: int = 0) -> list[int]:
    # Any id with an embedding row: the tokenizer's, and the padding rows beyond it.
    return np.random.default_rng(seed).integers(0, spec.vocab_size, size=length).tolist()


@pytest.fixture(scope="module")
def reference_models(shared_bpe_checkpoint):
    cache = {}

    def get(spec):
        if spec not in cache:
            cache.clear()  # one 200k-vocabulary model at a time is enough memory
            cache[spec] = load_reference_model(shared_bpe_checkpoint(spec))
        return cache[spec]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize(("spec", "length", "n_ctx"), CASES)
def test_llama_cpp_logits_match_transformers_at_every_position(
    spec, length, n_ctx, outtype, converted_bpe_gguf, reference_models
) -> None:
    tokens = prompt(spec, length)
    reference = transformers_logits(reference_models(spec), tokens)
    ours = llama_cpp_logits(converted_bpe_gguf(spec, outtype), tokens, n_ctx)
    assert ours.shape == reference.shape == (length, spec.vocab_size)
    assert normalised_mse(ours, reference) < BOUNDS[outtype]
    if outtype == "f32":
        assert top1_agreement(ours, reference) == 1.0
    else:
        assert top1_flips_are_near_ties(ours, reference)


@pytest.mark.slow
def test_partial_rotary_dimension_is_what_makes_phi4_mini_match(
    shared_bpe_checkpoint, converted_bpe_gguf, reference_models, tmp_path
) -> None:
    """The proof can fail: the same model rotating the whole head (what a converter that ignores
    partial_rotary_factor writes; the factor lists padded with 1 so llama.cpp loads it) disagrees."""
    gguf = converted_bpe_gguf(PHI4_MINI, "f32")
    assert read_gguf(gguf).get("phi3.rope.dimension_count") == PHI4_MINI.rotary_dim < PHI4_MINI.head_dim
    source = open_source(shared_bpe_checkpoint(PHI4_MINI))
    padding = [1.0] * ((PHI4_MINI.head_dim - PHI4_MINI.rotary_dim) // 2)
    tensors = [t for t in source.model.tensors if not t.name.startswith("rope_factors")] + [
        float32_tensor(f"rope_factors_{kind}.weight", list(PHI4_MINI.rope_scaling.long_factor) + padding)
        for kind in ("long", "short")
    ]
    wrong = write_variant(
        source,
        tmp_path / "full-rotary.gguf",
        tensors=tensors,
        metadata={"phi3.rope.dimension_count": PHI4_MINI.head_dim},
    )
    tokens = prompt(PHI4_MINI, 48)
    reference = transformers_logits(reference_models(PHI4_MINI), tokens)
    assert normalised_mse(llama_cpp_logits(gguf, tokens, 256), reference) < 1e-8
    assert normalised_mse(llama_cpp_logits(wrong, tokens, 256), reference) > 1e-3
