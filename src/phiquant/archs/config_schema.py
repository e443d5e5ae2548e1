"""The types config.json's hyper-parameters must have, checked before any family module uses them.

config.json comes with a downloaded checkpoint and may say anything: `"rms_norm_eps": "abc"`,
`"head_dim": 1e400`, `"rope_scaling": [1, 2]`, `"long_factor": {"a": 1}`.  The family modules do
arithmetic on these values; without this check a wrong type would surface as a Python traceback
from deep inside a conversion.  Unknown keys are left alone (configs carry many that phiquant never
reads), and null is accepted everywhere because HParams treats null as absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
