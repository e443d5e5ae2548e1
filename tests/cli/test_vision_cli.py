"""`phiquant generate --image` on the Phi-4-reasoning-vision fixture: images in, text out, bad input refused
in one line with exit 2 (image problems before the model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import GGUFReader, GGUFWriter

from tests.cli.run import assert_one_line_error, cli_environment, run_phiquant
from tests.fixtures.image_files import bad_image_files, noise_image


@pytest.fixture(scope="module")
def vision_model(converted_phi4v):
    return converted_phi4v("f16", "f16")


@pytest.mark.slow
def test_chat_with_two_images_completes_and_images_count_in_the_prompt(vision_model, tmp_path) -> None:
    png = noise_image(tmp_path / "a.png", 300, 200)
    webp = noise_image(tmp_path / "b.webp", 120, 100, seed=1)
    common = ("generate", vision_model.model, "--chat", "-p", "What is in these pictures?", "--ctx", "1024")
    text_only = run_phiquant(*common, "--max-tokens", "1", "--json")
    with_images = run_phiquant(
        *common, "--image", png, "--image", webp, "--max-tokens", "4", "--seed", "3", "--json"
    )
    assert with_images.returncode == 0, with_images.stderr
    result = json.loads(with_images.stdout)
    # 2 markers + newlines replace nothing: the difference is the images' tokens (>= 64 each: min pixels)
    assert result["prompt_tokens"] - json.loads(text_only.stdout)["prompt_tokens"] >= 2 * 64
    assert result["completion_tokens"] == 4
    again = run_phiquant(
        *common, "--image", png, "--image", webp, "--max-tokens", "4", "--seed", "3", "--json"
    )
    assert json.loads(again.stdout)["text"] == result["text"]


@pytest.mark.parametrize("case", ["truncated", "svg", "pdf", "huge", "webp", "empty"])
def test_bad_image_is_one_line_before_the_model_loads(case, tmp_path) -> None:
    path, fragment = bad_image_files(tmp_path)[case]
    result = run_phiquant("generate", tmp_path / "never-loaded.gguf", "--chat", "-p", "hi", "--image", path)
    assert_one_line_error(result, str(path), fragment)


@pytest.mark.slow
def test_model_without_projector_or_with_another_models_is_refused(vision_model, tmp_path) -> None:
    image = noise_image(tmp_path / "a.png", 64, 64)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / vision_model.model.name).symlink_to(vision_model.model)
    result = run_phiquant("generate", alone / vision_model.model.name, "--chat", "-p", "hi", "--image", image)
    assert_one_line_error(result, "has no vision projector", "--mmproj")

    result = run_phiquant(
        "generate", vision_model.model, "--mmproj", vision_model.model, "--chat", "-p", "hi", "--image", image
    )
    assert_one_line_error(result, "not a vision projector")

    other = tmp_path / "other-mmproj.gguf"
    copy_with_projection_dim(vision_model.mmproj, other, 512)
    result = run_phiquant(
        "generate", vision_model.model, "--mmproj", other, "--chat", "-p", "hi", "--image", image
    )
    assert_one_line_error(result, "belongs to another model", "512", "256")


def copy_with_projection_dim(source, target, width: int) -> None:
    """The same projector declaring another language model's width (what an mmproj of a bigger sibling says)."""
    reader = GGUFReader(source)
    writer = GGUFWriter(target, "clip")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = width if key == "clip.vision.projection_dim" else field.contents()
        writer.add_key_value(
            key, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None
        )
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name,
            tensor.data,
            raw_shape=tuple(reversed([int(n) for n in tensor.shape])),
            raw_dtype=tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.slow
def test_chat_about_an_image_starts_as_generate_does(vision_model, tmp_path) -> None:
    image = noise_image(tmp_path / "a.png", 200, 160)
    flags = ("--image", image, "--max-tokens", "3", "--seed", "5", "--ctx", "1024", "--json")
    chat = subprocess.run(
        [sys.executable, "-m", "phiquant", "chat", str(vision_model.model), *map(str, flags)],
        input="What is this?\nAnd the colours?\n", capture_output=True, text=True, env=cli_environment(), timeout=600,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    first, second = (json.loads(line) for line in chat.stdout.splitlines())
    generated = run_phiquant("generate", vision_model.model, "--chat", "-p", "What is this?", *flags)
    assert json.loads(generated.stdout)["text"] == first["content"]
    assert second["prompt_tokens"] > first["prompt_tokens"] >= 64
