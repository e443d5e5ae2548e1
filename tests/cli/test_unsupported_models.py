"""Phi models llama.cpp cannot run as text models are refused by the CLI in one line: exit code 2, the
architecture named, why llama.cpp cannot run it, and what to use instead -- for `convert` and `quantize`,
in human and --json mode, with nothing written."""

from __future__ import annotations

import pytest

from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.unsupported_models import UNSUPPORTED_CONFIGS, build_unsupported_checkpoint

# fixture -> (architecture, why, what instead)
CASES = {
    "phi3_small": ("Phi3SmallForCausalLM", "block-sparse attention", "use Phi-3-mini or Phi-3-medium"),
    "phi35_vision": ("Phi3VForCausalLM", "no llama.cpp support", "for images use Phi-4-reasoning-vision-15B"),
    "phi4_multimodal": (
        "Phi4MMForCausalLM",
        "LoRA adapters llama.cpp cannot run",
        "for images Phi-4-reasoning-vision-15B",
    ),
    "phi4_mini_flash": ("Phi4FlashForCausalLM", "Mamba/attention hybrid", "use Phi-4-mini-reasoning"),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def unsupported(request, tmp_path):
    config = UNSUPPORTED_CONFIGS[request.param]
    checkpoint = build_unsupported_checkpoint(tmp_path / config["_name_or_path"], config)
    return checkpoint, CASES[request.param]


def test_convert_refuses_with_why_and_what_instead(unsupported, tmp_path) -> None:
    checkpoint, (architecture, why, instead) = unsupported
    out = tmp_path / "out"
    out.mkdir()
    result = run_phiquant("convert", checkpoint, "-o", out / "model.gguf")
    assert_one_line_error(result, architecture, why, instead, "llama.cpp")
    assert result.stdout == ""
    assert list(out.iterdir()) == []


def test_quantize_refuses_the_same_way_in_json_mode(unsupported, tmp_path) -> None:
    checkpoint, (architecture, why, instead) = unsupported
    result = run_phiquant("quantize", checkpoint, "-t", "Q4_K_M", "-o", tmp_path / "out", "--json")
    assert_one_line_error(result, architecture, why, instead)
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_transformers_native_phi4_multimodal_class_is_refused_too(tmp_path) -> None:
    """transformers' own port saves `Phi4MultimodalForCausalLM` (model_type phi4_multimodal)."""
    config = {**UNSUPPORTED_CONFIGS["phi4_multimodal"], "architectures": ["Phi4MultimodalForCausalLM"]}
    checkpoint = build_unsupported_checkpoint(
        tmp_path / "phi4mm-native", {**config, "model_type": "phi4_multimodal"}
    )
    result = run_phiquant("convert", checkpoint, "-o", tmp_path / "model.gguf")
    assert_one_line_error(result, "Phi4MultimodalForCausalLM", "LoRA", "Phi-4-mini-instruct")
