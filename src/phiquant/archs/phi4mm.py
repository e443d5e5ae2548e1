"""Phi4MMForCausalLM (Phi-4-multimodal-instruct): its language model alone, as a `phi3` GGUF (--text-only).

llama.cpp cannot run the multimodal model: images and audio enter through encoders (SigLIP, a conformer)
and through LoRA adapters injected into every decoder projection, switched per input kind (llama.cpp
#12117).  But the model's own text path uses neither: Microsoft's modeling_phi4mm.py unsets the LoRA
adapters for text-only input (`InputMode.LANGUAGE` -> `unset_lora_adapter()`) and embeds text tokens with
the plain token embedding.  What runs then is the base decoder, a Phi-4-mini (Phi3ForCausalLM) trunk, with
the checkpoint's own weights: the `base_layer` of each LoRA-wrapped projection, the norms, the tied
embedding.  So a text-only file is honest: it answers text prompts exactly as Phi-4-multimodal does when
given no image and no audio, and it is offered only when asked for.

What is dropped, and said so: the `model.embed_tokens_extend.*` towers (vision and audio encoders and
their projections) and every `lora_A`/`lora_B` adapter tensor.  The mapping is the one transformers'
own conversion script applies to the language model (convert_phi4_multimodal_weights_to_hf.py: lora
keys dropped, `base_layer.` stripped); the text hyper-parameters are Phi-4-mini's keys in the same
config.json (partial rotary 0.75, LongRoPE whose short factors are all 1, tied embeddings, vocab 200064),
and the tokenizer files are Phi-4-mini's o200k ones, so phi3.build does the rest.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from phiquant.archs import phi3
from phiquant.archs.common import string
from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.tensor_entry import TensorEntry
from phiquant.errors import PhiquantError
from phiquant.model_source import ModelSource
from phiquant.vocab.bpe import llama_cpp_safe_name

# Tensors of the image and audio paths (encoders, projections, separators).
MULTIMODAL_TOWER_PREFIX = "model.embed_tokens_extend."
# PEFT's layout of an adapted projection: <module>.base_layer.weight plus <module>.lora_{A,B}.<adapter>.weight.
LORA_TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?:A|B)\.(?P<adapter>[^.]+)\.weight$")
BASE_LAYER = ".base_layer."
# config.json keys of the multimodal parts; the text config is the rest.
MULTIMODAL_CONFIG_KEYS = (
    "audio_processor",
    "embd_layer",
    "img_processor",
    "vision_lora",
    "speech_lora",
    "auto_map",
)


@dataclass(frozen=True)
class LanguageModel:
    """The decoder's tensors under Phi3ForCausalLM names, and what was left out."""

    tensors: dict[str, TensorEntry]
    tower_tensors: int
    lora_tensors: int
    adapters: tuple[str, ...]


def split_language_model(checkpoint: Checkpoint) -> LanguageModel:
    """The decoder's tensors renamed as Phi3ForCausalLM names them; towers and adapters counted."""
    tensors: dict[str, TensorEntry] = {}
    towers, lora, adapters, adapted = 0, 0, set(), set()
    for name, entry in checkpoint.tensors.items():
        if name.startswith(MULTIMODAL_TOWER_PREFIX):
            towers += 1
            continue
        lora_match = LORA_TENSOR.match(name)
        if lora_match:
            lora += 1
            adapters.add(lora_match["adapter"])
            adapted.add(lora_match["module"])
            continue
        text_name = name.replace(BASE_LAYER, ".")
        if text_name in tensors:
            raise PhiquantError(
                f"both {text_name!r} and its LoRA base layer are stored: which one the text path runs is "
                "ambiguous",
                path=checkpoint.path,
            )
        tensors[text_name] = entry
    without_base = sorted(m for m in adapted if f"{m}.base_layer.weight" not in checkpoint.tensors)
    if without_base:
        raise PhiquantError(
            f"LoRA adapter tensors for {without_base[0]!r} but no {without_base[0]}.base_layer.weight: "
            "the base weights the text path runs are missing",
            path=checkpoint.path,
        )
    return LanguageModel(tensors, towers, lora, tuple(sorted(adapters)))


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as the language model's own: the multimodal blocks removed, Phi3ForCausalLM named."""
    text = {key: value for key, value in config.items() if key not in MULTIMODAL_CONFIG_KEYS}
    text["architectures"] = ["Phi3ForCausalLM"]
    text["model_type"] = "phi3"
    return text


def build(checkpoint: Checkpoint) -> ModelSource:
    """The language model as a `phi3` ModelSource, named "<model> (text only)"."""
    language = split_language_model(checkpoint)
    if language.tower_tensors == 0 and language.lora_tensors == 0:
        raise PhiquantError(
            "no vision/audio tensors and no LoRA adapters here: not the layout of Phi-4-multimodal-instruct",
            path=checkpoint.path,
        )
    text_checkpoint = Checkpoint(checkpoint.path, text_config(checkpoint.config), language.tensors)
    source = phi3.build(text_checkpoint)
    name = source.value("general.name", "Phi-4-multimodal")
    source.metadata = [
        dataclasses.replace(item, value=llama_cpp_safe_name(f"{name} (text only)"))
        if item.key == "general.name"
        else item
        for item in source.metadata
    ]
    source.metadata.append(string("phiquant.extracted_from", "Phi4MMForCausalLM language model (text only)"))
    source.warnings.insert(
        0,
        f"converted the language model only: left out {language.tower_tensors} vision/audio encoder tensors "
        f"and {language.lora_tensors} LoRA adapter tensors ({', '.join(language.adapters) or 'none'}); the "
        "file answers text prompts as Phi-4-multimodal does without images or audio",
    )
    return source
