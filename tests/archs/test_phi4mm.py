"""Phi-4-multimodal --text-only: our `phi3` GGUF of the language model runs in llama.cpp like the ORIGINAL
multimodal model runs text in transformers.

Oracle: transformers' own Phi4MultimodalForCausalLM (not phiquant's mapping: the test maps Microsoft's
layout the way transformers' conversion script does, tests/fixtures/phi4mm_reference.py), given token
ids only, with the LoRA adapters off as Microsoft's model runs InputMode.LANGUAGE.  The fixture mirrors
Microsoft's remote-code checkpoint: PEFT `base_layer`/`lora_A`/`lora_B` names with non-zero adapters,
vision/audio towers under `model.embed_tokens_extend.`, LongRoPE with all-1 short factors and Phi-4-mini's
long ones, partial rotary 0.75, tied embeddings, 200064 logits.  Negative controls show each proof can
fail: an active adapter, or the long factors on a short prompt, disagree with the same reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.archs import phi4mm
from phiquant.archs.phi4mm import split_language_model
from phiquant.checkpoint.directory import Checkpoint
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from tests.fixtures.phi4mm_checkpoints import PHI4_MULTIMODAL, VISION_LORA
from tests.fixtures.phi4mm_reference import load_reference_model, lora_merged, microsoft_state_dict
from tests.oracles import llama_cpp_logits, normalised_mse, top1_agreement, transformers_logits

TEXT = PHI4_MULTIMODAL.text
# f32: the bar of the other families' tests (measured about 1e-12, top-1 100%).
F32_BOUND = 1e-4
# (prompt length, n_ctx): llama.cpp takes the long factors when n_ctx exceeds the original context (256),
# transformers when the sequence does; the long prompt crosses it with a context that selects them.
CASES = [
    pytest.param(48, 256, id="short-factors"),
    pytest.param(300, 512, id="past-original-context"),
]


def prompt(length: int, seed: int = 0) -> list[int]:
    # Any id with an embedding row: the tokenizer's, the placeholders and the padding rows beyond them.
    return np.random.default_rng(seed).integers(0, TEXT.vocab_size, size=length).tolist()


@pytest.fixture(scope="module")
def reference_model(shared_phi4mm_checkpoint):
    return load_reference_model(shared_phi4mm_checkpoint(PHI4_MULTIMODAL))


@pytest.mark.slow
@pytest.mark.parametrize(("length", "n_ctx"), CASES)
def test_llama_cpp_logits_match_the_multimodal_model_on_text(
    length, n_ctx, converted_phi4mm_gguf, reference_model
) -> None:
    tokens = prompt(length)
    reference = transformers_logits(reference_model, tokens)
    ours = llama_cpp_logits(converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32"), tokens, n_ctx)
    assert ours.shape == reference.shape == (length, TEXT.vocab_size)
    assert normalised_mse(ours, reference) < F32_BOUND
    assert top1_agreement(ours, reference) == 1.0


@pytest.mark.slow
def test_an_active_adapter_would_disagree(
    shared_phi4mm_checkpoint, converted_phi4mm_gguf, reference_model
) -> None:
    """The fixture's adapters are not inert: with the vision LoRA switched on (as for an image prompt) the
    same model gives other logits, so agreement above means base layers, not adapted ones."""
    checkpoint = shared_phi4mm_checkpoint(PHI4_MULTIMODAL)
    adapted = load_reference_model(
        checkpoint, lora_merged(microsoft_state_dict(checkpoint), "vision", VISION_LORA.scaling)
    )
    tokens = prompt(48)
    ours = llama_cpp_logits(converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32"), tokens, 256)
    assert normalised_mse(ours, transformers_logits(reference_model, tokens)) < 1e-8
    assert normalised_mse(ours, transformers_logits(adapted, tokens)) > 1e-3


@pytest.mark.slow
def test_short_prompts_need_the_short_factors(converted_phi4mm_gguf, reference_model) -> None:
    """Phi-4-multimodal's short factors (all 1) differ from its long ones: running a short prompt with
    the long factors (a context past the original one) disagrees, so the short case proves the choice."""
    tokens = prompt(48)
    reference = transformers_logits(reference_model, tokens)
    gguf = converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32")
    assert normalised_mse(llama_cpp_logits(gguf, tokens, 256), reference) < 1e-8
    assert normalised_mse(llama_cpp_logits(gguf, tokens, 512), reference) > 1e-3


def test_the_gguf_holds_the_language_model_alone(shared_phi4mm_checkpoint, converted_phi4mm_gguf) -> None:
    config = json.loads((shared_phi4mm_checkpoint(PHI4_MULTIMODAL) / "config.json").read_text())
    gguf = read_gguf(converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32"))
    names = [t.name for t in gguf.tensors]
    assert gguf.arch == "phi3"
    # 6 per layer, embedding, final norm, two LongRoPE factor tensors; no output.weight (tied).
    assert len(names) == 6 * TEXT.num_hidden_layers + 4 and "output.weight" not in names
    assert not any("lora" in n or "embed_tokens_extend" in n for n in names)
    assert gguf.get("phi3.rope.dimension_count") == TEXT.rotary_dim == 48
    assert gguf.get("phi3.rope.scaling.original_context_length") == config["original_max_position_embeddings"]
    assert gguf.get("phi3.context_length") == config["max_position_embeddings"]
    factors = {t.name: t for t in gguf.tensors if t.name.startswith("rope_factors")}
    short = gguf.raw_bytes(factors["rope_factors_short.weight"]).view(np.float32)
    long = gguf.raw_bytes(factors["rope_factors_long.weight"]).view(np.float32)
    assert short.tolist() == config["rope_scaling"]["short_factor"] == [1.0] * 24
    assert np.allclose(long, config["rope_scaling"]["long_factor"]) and long.max() > 40


def test_metadata_names_the_extraction_and_keeps_the_end_of_generation_ids(
    shared_phi4mm_checkpoint, converted_phi4mm_gguf
) -> None:
    checkpoint = shared_phi4mm_checkpoint(PHI4_MULTIMODAL)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    gguf = read_gguf(converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32"))
    assert gguf.get("general.name") == "Phi-4-multimodal-instruct (text only)"
    assert "Phi4MMForCausalLM" in gguf.get("phiquant.extracted_from")
    assert (
        sorted(gguf.get("phiquant.eog_token_ids")) == sorted(generation["eos_token_id"]) == [199999, 200020]
    )
    assert gguf.get("tokenizer.ggml.eos_token_id") == 199999  # <|endoftext|>
    assert gguf.get("tokenizer.ggml.eot_token_id") == 200020  # <|end|>
    assert gguf.get("tokenizer.ggml.bos_token_id") == 199999
    # No add_bos_token key in this tokenizer_config.json: what the post-processor adds (nothing).
    assert "add_bos_token" not in tokenizer_config and gguf.get("tokenizer.ggml.add_bos_token") is False
    assert gguf.get("tokenizer.chat_template") == tokenizer_config["chat_template"]
    assert len(gguf.get("tokenizer.ggml.tokens")) == TEXT.vocab_size


def test_conversion_says_what_it_left_out(shared_phi4mm_checkpoint, tmp_path) -> None:
    result = api.convert(
        shared_phi4mm_checkpoint(PHI4_MULTIMODAL), tmp_path / "m.gguf", "f16", text_only=True
    )
    assert (
        "21 vision/audio encoder tensors and 32 LoRA adapter tensors (speech, vision)" in result.warnings[0]
    )


def layout(*names: str) -> Checkpoint:
    """A checkpoint holding only tensor names (the split reads nothing else)."""
    return Checkpoint(Path("/checkpoints/mm"), {"architectures": ["Phi4MMForCausalLM"]}, dict.fromkeys(names))  # type: ignore[arg-type]


QKV = "model.layers.0.self_attn.qkv_proj"


def test_the_split_maps_base_layers_and_counts_what_it_drops() -> None:
    language = split_language_model(
        layout(
            f"{QKV}.base_layer.weight",
            f"{QKV}.lora_A.vision.weight",
            f"{QKV}.lora_B.speech.weight",
            "model.embed_tokens_extend.image_embed.glb_GN",
            "model.norm.weight",
        )
    )
    assert sorted(language.tensors) == [f"{QKV}.weight", "model.norm.weight"]
    assert (language.tower_tensors, language.lora_tensors, language.adapters) == (1, 2, ("speech", "vision"))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ((f"{QKV}.weight", f"{QKV}.base_layer.weight"), "ambiguous"),
        ((f"{QKV}.weight", f"{QKV}.lora_A.vision.weight"), "no model.layers.0.self_attn.qkv_proj.base_layer"),
    ],
    ids=["weight-and-base-layer", "adapter-without-base-layer"],
)
def test_inconsistent_adapter_layouts_are_refused(names, message) -> None:
    with pytest.raises(PhiquantError, match=message):
        split_language_model(layout(*names))


def test_a_checkpoint_without_towers_or_adapters_is_not_taken_for_phi4_multimodal() -> None:
    with pytest.raises(PhiquantError, match="not the layout of Phi-4-multimodal"):
        phi4mm.build(layout(f"{QKV}.weight", "model.norm.weight"))
