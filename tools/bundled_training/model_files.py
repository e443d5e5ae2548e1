"""config.json, generation_config.json and BF16 safetensors in Phi-3.5-mini-instruct's layout.

The key order, the `rope_scaling` block (`type: longrope`, factor lists of head_dim/2 entries, no mscale
keys), the untied lm_head and the list of end-of-generation ids follow the real files
(/work/shared/reference/phi_model_files.md §1.1-1.2).  One deliberate difference: no `auto_map`, because
no remote modeling code ships with this model and transformers has Phi-3 built in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

HEAD_DIM = 64
ROPE_THETA = 10000.0
SLIDING_WINDOW = 262144  # Phi-3.5's value: larger than any context, i.e. no sliding window in practice
# Short factors rise gently towards the slowest rotary dimensions, as Phi-3.5's do (1.0 ... 2.84).
LARGEST_SHORT_FACTOR = 2.0
# Rotary dimensions that turn more than this many times within the original context keep long factor 1;
# those that turn less than once are stretched by the full context-extension ratio (YaRN's "by parts").
FAST_ROTATIONS, SLOW_ROTATIONS = 32.0, 1.0


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 256
    intermediate_size: int = 768
    layers: int = 8
    original_context: int = 512  # the training sequence length
    max_context: int = 4096  # what LongRoPE's long factors are meant to reach

    @property
    def heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    def check(self) -> None:
        for name, value in (("hidden size", self.hidden_size), ("intermediate size", self.intermediate_size)):
            if value % 256:
                raise ValueError(f"{name} {value} is not a multiple of 256 (llama.cpp's k-quant block size)")


def longrope_factors(shape: ModelShape) -> tuple[list[float], list[float]]:
    """(short_factor, long_factor), head_dim/2 values each, rounded to float32 like Phi-3.5's lists."""
    pairs = HEAD_DIM // 2
    extension = shape.max_context / shape.original_context
    short, long = [], []
    for index in range(pairs):
        short_factor = 1.0 + (LARGEST_SHORT_FACTOR - 1.0) * (index / (pairs - 1)) ** 2
        wavelength = 2 * math.pi * ROPE_THETA ** (2 * index / HEAD_DIM)
        rotations = shape.original_context / wavelength
        stretch = (math.log(FAST_ROTATIONS) - math.log(max(rotations, 1e-9))) / math.log(
            FAST_ROTATIONS / SLOW_ROTATIONS
        )
        long_factor = 1.0 + (extension - 1.0) * min(max(stretch, 0.0), 1.0)
        short.append(_as_float32(short_factor))
        long.append(_as_float32(max(long_factor, short_factor)))
    return short, long


def _as_float32(value: float) -> float:
    return float(np.float32(round(value, 2)))


def phi35_config(shape: ModelShape, name: str, vocab_size: int, end_of_text_id: int) -> dict:
    shape.check()
    short_factor, long_factor = longrope_factors(shape)
    return {
        "_name_or_path": name,
        "architectures": ["Phi3ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": end_of_text_id,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_context,
        "model_type": "phi3",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.heads,
        "original_max_position_embeddings": shape.original_context,
        "pad_token_id": end_of_text_id,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long_factor, "short_factor": short_factor, "type": "longrope"},
        "rope_theta": ROPE_THETA,
        "sliding_window": SLIDING_WINDOW,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "attention_bias": False,
        "vocab_size": vocab_size,
    }


def generation_config(end_of_generation_ids: list[int], end_of_text_id: int) -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": end_of_generation_ids,
        "pad_token_id": end_of_text_id,
        "transformers_version": transformers.__version__,
    }


def parameter_count(shape: ModelShape, vocab_size: int) -> int:
    """Embedding and lm_head are separate matrices (untied), so the padded vocabulary counts twice."""
    attention = (3 * shape.hidden_size + shape.hidden_size) * shape.hidden_size
    mlp = 3 * shape.intermediate_size * shape.hidden_size
    per_layer = attention + mlp + 2 * shape.hidden_size
    return 2 * vocab_size * shape.hidden_size + shape.layers * per_layer + shape.hidden_size


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def save_bf16_safetensors(model: torch.nn.Module, path: Path) -> int:
    """The weights as one BF16 `model.safetensors` (a single file, as small Hugging Face models ship)."""
    tensors = {
        name: tensor.detach().to(torch.bfloat16).contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(tensor.numel() for tensor in tensors.values())
