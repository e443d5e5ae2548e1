"""llama.cpp file-type presets as data tables, over ggml's tensor types (phiquant.ggml.types).

The enum values mirror `include/llama.h` (enum llama_ftype) of the llama.cpp that llama-cpp-python
0.3.36 vendors.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass

from phiquant.errors import PhiquantError
from phiquant.ggml.types import (
    GGML_TYPE_COUNT,
    QUANTIZE_TARGETS,
    TYPE_INFO,
    GGMLType,
    TypeInfo,
    TypeRole,
    type_info,
)

__all__ = [
    "GGML_TYPE_COUNT",
    "PRESETS",
    "QUANTIZE_TARGETS",
    "TYPE_INFO",
    "GGMLType",
    "LlamaFtype",
    "Preset",
    "TypeInfo",
    "TypeRole",
    "parse_ggml_type",
    "parse_preset",
    "type_info",
]


class LlamaFtype(enum.IntEnum):
    """enum llama_ftype (llama.h): the value written to general.file_type."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    MOSTLY_MXFP4_MOE = 38
    MOSTLY_NVFP4 = 39
    MOSTLY_Q1_0 = 40
    MOSTLY_Q2_0 = 41


@dataclass(frozen=True)
class Preset:
    """A file type a user can ask for: the llama_ftype it writes and its default tensor type."""

    name: str
    ftype: LlamaFtype
    default_type: GGMLType  # llama-quant.cpp llama_ftype_get_default_type
    in_llama_cpp: bool = True  # False: llama_model_quantize refuses this ftype (see NVFP4 below)


F = LlamaFtype
T = GGMLType
# Default types follow llama_ftype_get_default_type (src/llama-quant.cpp); note the three presets whose
# default is not their namesake: IQ3_XS -> IQ3_S, IQ2_S -> IQ2_XS, IQ2_M -> IQ2_S.
# fmt: off
PRESETS: tuple[Preset, ...] = (
    Preset("F32",       F.ALL_F32,          T.F32),
    Preset("F16",       F.MOSTLY_F16,       T.F16),
    Preset("BF16",      F.MOSTLY_BF16,      T.BF16),
    Preset("Q8_0",      F.MOSTLY_Q8_0,      T.Q8_0),
    Preset("Q4_0",      F.MOSTLY_Q4_0,      T.Q4_0),
    Preset("Q4_1",      F.MOSTLY_Q4_1,      T.Q4_1),
    Preset("Q5_0",      F.MOSTLY_Q5_0,      T.Q5_0),
    Preset("Q5_1",      F.MOSTLY_Q5_1,      T.Q5_1),
    Preset("Q2_K",      F.MOSTLY_Q2_K,      T.Q2_K),
    Preset("Q2_K_S",    F.MOSTLY_Q2_K_S,    T.Q2_K),
    Preset("Q3_K_S",    F.MOSTLY_Q3_K_S,    T.Q3_K),
    Preset("Q3_K_M",    F.MOSTLY_Q3_K_M,    T.Q3_K),
    Preset("Q3_K_L",    F.MOSTLY_Q3_K_L,    T.Q3_K),
    Preset("Q4_K_S",    F.MOSTLY_Q4_K_S,    T.Q4_K),
    Preset("Q4_K_M",    F.MOSTLY_Q4_K_M,    T.Q4_K),
    Preset("Q5_K_S",    F.MOSTLY_Q5_K_S,    T.Q5_K),
    Preset("Q5_K_M",    F.MOSTLY_Q5_K_M,    T.Q5_K),
    Preset("Q6_K",      F.MOSTLY_Q6_K,      T.Q6_K),
    Preset("IQ1_S",     F.MOSTLY_IQ1_S,     T.IQ1_S),
    Preset("IQ1_M",     F.MOSTLY_IQ1_M,     T.IQ1_M),
    Preset("IQ2_XXS",   F.MOSTLY_IQ2_XXS,   T.IQ2_XXS),
    Preset("IQ2_XS",    F.MOSTLY_IQ2_XS,    T.IQ2_XS),
    Preset("IQ2_S",     F.MOSTLY_IQ2_S,     T.IQ2_XS),
    Preset("IQ2_M",     F.MOSTLY_IQ2_M,     T.IQ2_S),
    Preset("IQ3_XXS",   F.MOSTLY_IQ3_XXS,   T.IQ3_XXS),
    Preset("IQ3_XS",    F.MOSTLY_IQ3_XS,    T.IQ3_S),
    Preset("IQ3_S",     F.MOSTLY_IQ3_S,     T.IQ3_S),
    Preset("IQ3_M",     F.MOSTLY_IQ3_M,     T.IQ3_S),
    Preset("IQ4_NL",    F.MOSTLY_IQ4_NL,    T.IQ4_NL),
    Preset("IQ4_XS",    F.MOSTLY_IQ4_XS,    T.IQ4_XS),
    Preset("TQ1_0",     F.MOSTLY_TQ1_0,     T.TQ1_0),
    Preset("TQ2_0",     F.MOSTLY_TQ2_0,     T.TQ2_0),
    Preset("MXFP4_MOE", F.MOSTLY_MXFP4_MOE, T.MXFP4),
    Preset("Q1_0",      F.MOSTLY_Q1_0,      T.Q1_0),
    Preset("Q2_0",      F.MOSTLY_Q2_0,      T.Q2_0),
    # llama.cpp has no NVFP4 preset: llama_ftype_get_default_type has no entry for it, so
    # llama_model_quantize fails with "invalid output file type 39".  phiquant offers it as if that entry
    # said NVFP4: the ordinary rules run with NVFP4 as the default (output.weight -> Q6_K, everything
    # else NVFP4), and the file says MOSTLY_NVFP4, which is what llama.cpp's loader reports for NVFP4 files.
    Preset("NVFP4",     F.MOSTLY_NVFP4,     T.NVFP4, in_llama_cpp=False),
)
# fmt: on

# The short names llama-quantize accepts (tools/quantize/quantize.cpp QUANT_OPTIONS).
PRESET_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

PRESETS_BY_NAME: dict[str, Preset] = {preset.name: preset for preset in PRESETS}
PRESETS_BY_FTYPE: dict[LlamaFtype, Preset] = {preset.ftype: preset for preset in PRESETS}


def _unknown_name_error(kind: str, given: str, valid: list[str]) -> PhiquantError:
    nearest = difflib.get_close_matches(given.upper(), [name.upper() for name in valid], n=1, cutoff=0.5)
    hint = f" Did you mean {nearest[0]}?" if nearest else ""
    return PhiquantError(f"unknown {kind} {given!r}.{hint} Valid {kind}s: {', '.join(valid)}")


def parse_preset(name: str) -> Preset:
    """A preset from a user's spelling: case-insensitive name, alias, or llama_ftype number ("15")."""
    key = name.strip().upper()
    key = PRESET_ALIASES.get(key, key)
    if key in PRESETS_BY_NAME:
        return PRESETS_BY_NAME[key]
    # llama-quantize also takes the ftype number (try_parse_ftype in tools/quantize/quantize.cpp).
    by_number = {int(preset.ftype): preset for preset in PRESETS}
    if key.isdigit() and int(key) in by_number:
        return by_number[int(key)]
    valid = [preset.name for preset in PRESETS] + sorted(PRESET_ALIASES)
    raise _unknown_name_error("quantization type", name, valid)


def parse_ggml_type(name: str | int) -> GGMLType:
    """A tensor type a user may force (--tensor-type, output/embedding type): any quantization target.

    Matches ggml's own names case-insensitively, as llama-quantize's parse_ggml_type does.
    """
    if isinstance(name, int):
        info = type_info(name)
    else:
        key = name.strip().upper()
        matches = [row for row in TYPE_INFO.values() if row.type.name == key]
        if not matches:
            valid = [row.type.name for row in TYPE_INFO.values() if row.is_quantize_target]
            raise _unknown_name_error("tensor type", name, valid)
        info = matches[0]
    if not info.is_quantize_target:
        targets = ", ".join(t.name for t in QUANTIZE_TARGETS)
        raise PhiquantError(f"{info.name} cannot be a quantization target; choose one of: {targets}")
    return info.type
