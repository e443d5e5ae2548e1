"""The registry: which module handles which Hugging Face architecture.

`FAMILIES` is the single source of truth; adding a Phi family means one module and one line here.
`UNSUPPORTED` names the Phi models llama.cpp cannot run as text models, with what to do instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from phiquant.checkpoint.directory import Checkpoint
from phiquant.errors import PhiquantError, UnsupportedModelError
from phiquant.model_source import ModelSource

# HF `architectures[0]` -> module in phiquant.archs
FAMILIES: dict[str, str] = {
    "Phi3ForCausalLM": "phi3",
    "PhiMoEForCausalLM": "phimoe",  # Microsoft's spelling (Phi-3.5-MoE-instruct's config.json)
    "PhimoeForCausalLM": "phimoe",  # transformers' native class: what its save_pretrained writes
    "PhiForCausalLM": "phi2",  # Phi-1, Phi-1.5, Phi-2
    "Phi4ForCausalLMV": "phi4v",  # Phi-4-reasoning-vision: a phi-4 GGUF plus an mmproj file beside it
}

# Multimodal architectures whose language model can be converted on its own, on request (--text-only).
TEXT_ONLY_FAMILIES: dict[str, str] = {
    "Phi4MMForCausalLM": "phi4mm",  # Phi-4-multimodal-instruct: its text path is a Phi-4-mini
}

UNSUPPORTED: dict[str, str] = {
    "Phi3SmallForCausalLM": (
        "Phi-3-small uses block-sparse attention, which llama.cpp does not implement (llama.cpp #7439, "
        "#8241); use Phi-3-mini or Phi-3-medium, or run Phi-3-small with transformers or vLLM"
    ),
    "Phi3VForCausalLM": (
        "Phi-3/3.5-vision has no llama.cpp support (its converter PR #17687 was closed); for images use "
        "Phi-4-reasoning-vision-15B (convert writes its mmproj; generate/chat --image, serve image_url), "
        "or run it with transformers or ONNX Runtime GenAI, or use the text-only Phi-3.5-mini"
    ),
    "Phi4MMForCausalLM": (
        "Phi-4-multimodal's vision and audio paths need LoRA adapters llama.cpp cannot run (llama.cpp "
        "#12117); its language model is Phi-4-mini: convert Phi-4-mini-instruct instead, and for images "
        "Phi-4-reasoning-vision-15B"
    ),
    "Phi4FlashForCausalLM": (
        "Phi-4-mini-flash-reasoning is a SambaY Mamba/attention hybrid that llama.cpp cannot run "
        "(PR #20880 was not merged); use Phi-4-mini-reasoning or run it with transformers or vLLM"
    ),
}
UNSUPPORTED["Phi4MultimodalForCausalLM"] = UNSUPPORTED["Phi4MMForCausalLM"]  # transformers' native port


def architecture_of(checkpoint: Checkpoint) -> str:
    architectures = checkpoint.config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        raise PhiquantError("config.json has no architectures list", path=checkpoint.path / "config.json")
    return architectures[0]


def registry_spelling(architecture: str) -> str:
    """The registry's name for an architecture spelled with other capitals.  Fine-tunes re-saved by other
    tools write e.g. PhiMoeForCausalLM or PhimoeForCausalLM for Microsoft's PhiMoEForCausalLM; class
    names that differ only in case name the same model here, so they are matched case-insensitively."""
    by_lowercase = {name.lower(): name for name in (*FAMILIES, *UNSUPPORTED)}
    return by_lowercase.get(architecture.lower(), architecture)


def family_module(architecture: str) -> ModuleType:
    known = registry_spelling(architecture)
    if known in FAMILIES:
        return importlib.import_module(f"phiquant.archs.{FAMILIES[known]}")
    if known in UNSUPPORTED:
        raise UnsupportedModelError(f"{architecture}: {UNSUPPORTED[known]}")
    raise UnsupportedModelError(
        f"architecture {architecture} is not a Phi model phiquant supports; supported: {', '.join(sorted(FAMILIES))}"
    )


def load_model_source(checkpoint: Checkpoint, *, text_only: bool = False) -> ModelSource:
    """Map a checkpoint to the GGUF model llama.cpp expects (metadata and lazy tensors).  `text_only`
    converts a multimodal checkpoint's language model alone (TEXT_ONLY_FAMILIES)."""
    architecture = architecture_of(checkpoint)
    if architecture in TEXT_ONLY_FAMILIES:
        if not text_only:
            raise UnsupportedModelError(
                f"{architecture}: {UNSUPPORTED[architecture]}. To convert its language model alone (text "
                "in, text out), pass --text-only"
            )
        module = importlib.import_module(f"phiquant.archs.{TEXT_ONLY_FAMILIES[architecture]}")
    elif text_only:
        raise PhiquantError(
            f"--text-only is for multimodal checkpoints ({', '.join(sorted(TEXT_ONLY_FAMILIES))}); "
            f"{architecture} is converted as it is without it",
            path=checkpoint.path / "config.json",
        )
    else:
        module = family_module(architecture)
    source: ModelSource = module.build(checkpoint)
    return source
