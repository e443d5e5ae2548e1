"""The vision path through libmtmd matches an independent torch computation.

Embeddings: the features libmtmd's encoder returns for an image (read with mtmd_encode_chunk /
mtmd_get_output_embd) against transformers' Siglip2VisionModel hidden_states[-2] through the projector,
on the same pixels (an image whose size libmtmd keeps: a multiple of the patch within the pixel limits;
its 16x20 grid also makes both sides interpolate the 16x16 position embedding).  Whole prompt: the first
generated token's logits against transformers' Phi3ForCausalLM fed the text embeddings with the projected
features spliced in at the marker, as the model's processor and forward do.
"""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.images import ImageInput
from phiquant.runtime.llama import LoadedModel, LoadOptions
from phiquant.runtime.prompt import PromptTokenizer
from phiquant.runtime.vision import IMAGE_POSITION, VisionProjector
from tests.fixtures.phi4v_checkpoints import IMAGE_MARKER, PHI4_REASONING_VISION
from tests.fixtures.phi4v_reference import (
    checkpoint_state,
    load_text_model,
    load_tokenizer,
    load_vision_model,
    projected_image_features,
    spliced_last_logits,
)
from tests.oracles import normalised_mse

PATCH = PHI4_REASONING_VISION.vision.patch_size
PROMPT = f"<|im_start|>user<|im_sep|>{IMAGE_MARKER}\nWhat is in this picture?<|im_end|><|im_start|>assistant<|im_sep|>"


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def as_input(pixels: np.ndarray) -> ImageInput:
    return ImageInput(pixels.shape[1], pixels.shape[0], pixels.tobytes(), "test image")


@pytest.fixture(scope="module")
def f32_model(converted_phi4v):
    converted = converted_phi4v("f32", "f32")
    with LoadedModel(converted.model, LoadOptions(use_extra_bufts=False)) as model:
        yield converted, model


@pytest.fixture(scope="module")
def reference(f32_model):
    converted, _ = f32_model
    state = checkpoint_state(converted.checkpoint)
    return state, load_vision_model(converted.checkpoint, state), load_text_model(converted.checkpoint, state)


@pytest.mark.slow
def test_image_embeddings_match_siglip2_and_projector(f32_model, reference) -> None:
    converted, model = f32_model
    state, vision, _ = reference
    pixels = random_image(16 * PATCH, 20 * PATCH)
    with VisionProjector(converted.mmproj, model, threads=2) as projector:
        chunk = projector.image_chunk(as_input(pixels))
        try:
            ours = projector.encode(chunk)
        finally:
            chunk.close()
    expected = projected_image_features(vision, state, pixels, PATCH).numpy()
    assert ours.shape == expected.shape == (16 * 20, PHI4_REASONING_VISION.text.hidden_size)
    assert normalised_mse(ours, expected) < 1e-4


@pytest.mark.slow
def test_image_prompt_first_token_logits_match_spliced_reference(f32_model, reference) -> None:
    converted, model = f32_model
    state, vision, text_model = reference
    pixels = random_image(16 * PATCH, 16 * PATCH, seed=3)
    tokenizer = PromptTokenizer(model, read_gguf(converted.model))
    hf = load_tokenizer(converted.checkpoint)
    before, after = PROMPT.split(IMAGE_MARKER)
    assert tokenizer.tokenize(before) == hf(before).input_ids
    assert tokenizer.tokenize(after) == hf(after).input_ids
    with (
        VisionProjector(converted.mmproj, model, threads=2) as projector,
        model.new_context(1024, reference_precision=True) as context,
    ):
        prompt = projector.build_prompt(PROMPT, [as_input(pixels)], tokenizer.tokenize)
        try:
            projector.evaluate(context, prompt)
        finally:
            prompt.close()
        assert context.tokens.count(IMAGE_POSITION) == 256
        ours = context.last_logits()
    features = projected_image_features(vision, state, pixels, PATCH)
    expected = spliced_last_logits(text_model, hf(before).input_ids, features, hf(after).input_ids)
    assert normalised_mse(ours, expected) < 1e-4
    assert ours.argmax() == expected.argmax()
    # the image matters: the same text with another image gives other logits
    other = spliced_last_logits(
        text_model,
        hf(before).input_ids,
        projected_image_features(vision, state, random_image(256, 256, 9), PATCH),
        hf(after).input_ids,
    )
    assert normalised_mse(other, expected) > 100 * normalised_mse(ours, expected)


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(1, 1), (3000, 2000), (16, 4000)])
def test_any_accepted_image_is_resized_within_the_pixel_limits(f32_model, width, height) -> None:
    converted, model = f32_model
    vision = PHI4_REASONING_VISION.vision
    pixels = np.full((height, width, 3), 127, dtype=np.uint8)
    with VisionProjector(converted.mmproj, model, threads=2) as projector:
        chunk = projector.image_chunk(as_input(pixels))
        try:
            assert vision.min_num_patches <= chunk.n_tokens <= vision.max_num_patches
            assert projector.encode(chunk).shape == (chunk.n_tokens, PHI4_REASONING_VISION.text.hidden_size)
        finally:
            chunk.close()
