"""The types config.json's hyper-parameters must have, checked before any family module uses them.

config.json comes with a downloaded checkpoint and may say anything: `"rms_norm_eps": "abc"`,
`"head_dim": 1e400`, `"rope_scaling": [1, 2]`, `"long_factor": {"a": 1}`.  The family modules do
arithmetic on these values; without this check a wrong type would surface as a Python traceback
from deep inside a conversion.  Unknown keys are left alone (configs carry many that phiquant never
reads), and null is accepted everywhere because HParams treats null as absent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError

# Sizes, counts and positions are written as GGUF uint32; real ones are far below 2^31.
MAX_COUNT = 2**31 - 1
# GGUF stores these hyper-parameters as float32.
MAX_FLOAT32 = 3.4028234e38


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return _is_int(value) and 0 < value <= MAX_COUNT


def count(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_COUNT


def number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and abs(value) <= MAX_FLOAT32
    except OverflowError:  # an integer too large for a float
        return False


def fraction(value: Any) -> bool:
    return number(value) and 0 < value <= 1


def numbers(value: Any) -> bool:
    return isinstance(value, list) and all(number(v) for v in value)


def token_ids(value: Any) -> bool:
    return count(value) or (isinstance(value, list) and all(count(v) for v in value))


def text(value: Any) -> bool:
    return isinstance(value, str)


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def json_object(value: Any) -> bool:
    return isinstance(value, dict)


Check = Callable[[Any], bool]

# key -> (check, what a valid value is, for the message)
TOP_LEVEL: dict[str, tuple[Check, str]] = {
    **{
        key: (positive_int, "a positive integer")
        for key in (
            "hidden_size",
            "n_embd",
            "num_attention_heads",
            "n_head",
            "num_key_value_heads",
            "n_head_kv",
            "vocab_size",
            "intermediate_size",
            "n_inner",
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "head_dim",
            "max_position_embeddings",
            "n_positions",
            "original_max_position_embeddings",
            "num_local_experts",
            "num_experts",
            "num_experts_per_tok",
            "num_experts_per_token",
        )
    },
    "sliding_window": (count, "a non-negative integer"),
    **{
        key: (token_ids, "a token id or a list of token ids")
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    },
    **{
        key: (number, "a finite number")
        for key in (
            "rms_norm_eps",
            "layer_norm_eps",
            "layer_norm_epsilon",
            "rope_theta",
        )
    },
    # The share of each head's dimensions that rotate (Phi-2: 0.4, Phi-4-mini: 0.75).
    "partial_rotary_factor": (fraction, "a number in (0, 1]"),
    **{key: (boolean, "true or false") for key in ("tie_word_embeddings", "attention_bias", "lm_head_bias")},
    **{key: (text, "a string") for key in ("model_type", "hidden_act")},
    **{key: (json_object, "an object") for key in ("rope_scaling", "rope_parameters")},
}

ROPE: dict[str, tuple[Check, str]] = {
    **{key: (text, "a string") for key in ("type", "rope_type")},
    **{
        key: (number, "a finite number")
        for key in (
            "factor",
            "attention_factor",
            "short_mscale",
            "long_mscale",
            "rope_theta",
        )
    },
    "partial_rotary_factor": (fraction, "a number in (0, 1]"),
    **{key: (numbers, "a list of finite numbers") for key in ("long_factor", "short_factor")},
    "original_max_position_embeddings": (positive_int, "a positive integer"),
}


def check_config_values(config: dict[str, Any], file: Path) -> None:
    """Refuse a config.json whose hyper-parameters have the wrong type, naming the key."""
    _check(config, TOP_LEVEL, "", file)
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if isinstance(params, dict):
            _check(params, ROPE, f"{key}.", file)


def _check(values: dict[str, Any], table: dict[str, tuple[Check, str]], prefix: str, file: Path) -> None:
    for key, (check, expected) in table.items():
        value = values.get(key)
        if value is not None and not check(value):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise PhiquantError(f"{prefix}{key} must be {expected}, not {shown}", path=file)


# Counts that become loops over tensor names (one per layer, one per expert): bounded by the
# layers and experts the checkpoint's tensors actually hold, so a config.json that claims a billion
# layers is refused at once instead of planning a billion layers' tensors.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
EXPERT_KEYS = ("num_local_experts", "num_experts")
# Sizes that become tensor dimensions: none can exceed the largest dimension of any tensor.
DIMENSION_KEYS = (
    "hidden_size",
    "n_embd",
    "vocab_size",
    "intermediate_size",
    "n_inner",
    "head_dim",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "n_head_kv",
    "num_experts_per_tok",
    "num_experts_per_token",
)
# Positions (max_position_embeddings) drive no loop here; a context too large for memory is refused by
# the runtime, with its size, before llama.cpp allocates it (runtime.memory).

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_EXPERT_INDEX = re.compile(r"\.experts\.(\d+)\.")


def check_sizes_against_tensors(
    config: dict[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]], file: Path
) -> None:
    """Refuse sizes the checkpoint's tensors cannot hold, naming the key and the limit, before any
    family module loops over them.  Costs one pass over the tensor names, never over the value.  A
    dense model's config may carry an expert count it never uses: with no expert tensors it is left
    to the families, which read it only for MoE checkpoints."""
    layers = {int(m.group(1)) for name in tensor_shapes if (m := _LAYER_INDEX.search(name))}
    experts = {int(m.group(1)) for name in tensor_shapes if (m := _EXPERT_INDEX.search(name))}
    largest = max((max(shape, default=0) for shape in tensor_shapes.values()), default=0)
    stacked_experts = max((shape[0] for shape in tensor_shapes.values() if len(shape) == 3), default=0)
    limits = {
        **{key: (len(layers), "layers the checkpoint's tensors hold") for key in LAYER_KEYS},
        **{
            key: (max(len(experts), stacked_experts), "experts the checkpoint's tensors hold")
            for key in EXPERT_KEYS
        },
        **{key: (largest, "the largest dimension of any tensor in the checkpoint") for key in DIMENSION_KEYS},
    }
    scopes = [("", config)] + [
        (f"{key}.", config[key])
        for key in ("rope_scaling", "rope_parameters")
        if isinstance(config.get(key), dict)
    ]
    for prefix, values in scopes:
        for key, (limit, what) in limits.items():
            value = values.get(key)
            if _is_int(value) and value > limit and not (limit == 0 and key in EXPERT_KEYS):
                raise PhiquantError(f"{prefix}{key} is {value}, more than the {limit} {what}", path=file)
