"""The type and preset tables against ggml and llama.cpp themselves, and user-facing name parsing."""

from __future__ import annotations

import ctypes

import gguf
import pytest

from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.ggml.library import BASE, library_path
from phiquant.quant.types import (
    GGML_TYPE_COUNT,
    PRESETS,
    PRESETS_BY_FTYPE,
    TYPE_INFO,
    GGMLType,
    LlamaFtype,
    TypeRole,
    parse_ggml_type,
    parse_preset,
)


@pytest.mark.parametrize("ggml_type", list(GGMLType), ids=lambda t: t.name)
def test_type_table_row_matches_libggml(ggml_type: GGMLType) -> None:
    info = TYPE_INFO[ggml_type]
    assert info.ggml_name == ggml.type_name(ggml_type)
    assert info.block_size == ggml.block_size(ggml_type)
    assert info.block_bytes == ggml.type_size(ggml_type)
    assert info.is_quantized == ggml.is_quantized(ggml_type)
    assert info.ggml_requires_imatrix == ggml.quantize_requires_imatrix(ggml_type)


def test_type_enum_covers_every_type_libggml_names() -> None:
    # ggml answers for removed values with "DEPRECATED"/"... REMOVED"; everything else must be in the enum.
    lib = ggml._library()
    named = {value for value in range(GGML_TYPE_COUNT) if lib.ggml_blck_size(value) > 0}
    assert named == {int(t) for t in GGMLType}


def test_type_enum_agrees_with_pypi_gguf_which_lacks_q2_0() -> None:
    for ggml_type in GGMLType:
        if ggml_type == GGMLType.Q2_0:
            assert not hasattr(gguf.GGMLQuantizationType, "Q2_0")
            continue
        assert gguf.GGMLQuantizationType[ggml_type.name] == ggml_type


def test_ftype_enum_agrees_with_pypi_gguf_which_lacks_q2_0() -> None:
    for ftype in LlamaFtype:
        if ftype == LlamaFtype.MOSTLY_Q2_0:
            assert not hasattr(gguf.LlamaFileType, "MOSTLY_Q2_0")
            continue
        assert gguf.LlamaFileType[ftype.name] == ftype


def _llama_ftype_get_default_type() -> ctypes._CFuncPtr:
    # Declared in llama.cpp's src/llama-ext.h without extern "C", so only the mangled name is exported.
    # Test-only: the symbol is not a stable API.
    path = library_path(BASE).with_name("libllama.so")
    function = ctypes.CDLL(str(path))["_Z28llama_ftype_get_default_type11llama_ftype"]
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def test_preset_default_types_match_llama_ftype_get_default_type() -> None:
    default_type = _llama_ftype_get_default_type()
    for preset in PRESETS:
        expected = default_type(preset.ftype)
        if preset.in_llama_cpp:
            assert preset.default_type == expected, preset.name
        else:
            assert expected == GGML_TYPE_COUNT, f"llama.cpp now has a {preset.name} preset; compare with it"


def test_every_llama_cpp_preset_is_offered() -> None:
    default_type = _llama_ftype_get_default_type()
    offered = {int(ftype) for ftype in PRESETS_BY_FTYPE}
    llama_presets = {value for value in range(64) if default_type(value) != GGML_TYPE_COUNT}
    assert llama_presets <= offered


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("q4_k_m", "Q4_K_M"),
        ("Q4_K", "Q4_K_M"),
        ("q3_k", "Q3_K_M"),
        ("Q5_K", "Q5_K_M"),
        (" iq2_xxs ", "IQ2_XXS"),
        ("15", "Q4_K_M"),
        ("0", "F32"),
        ("mxfp4_moe", "MXFP4_MOE"),
        ("nvfp4", "NVFP4"),
        ("Q2_0", "Q2_0"),
    ],
)
def test_preset_names_parse_like_llama_quantize(spelling: str, expected: str) -> None:
    assert parse_preset(spelling).name == expected


def test_unknown_preset_error_suggests_the_nearest_and_lists_all() -> None:
    with pytest.raises(PhiquantError) as error:
        parse_preset("Q4_KM")
    message = str(error.value)
    assert "Did you mean Q4_K_M?" in message
    assert all(preset.name in message for preset in PRESETS)
    with pytest.raises(PhiquantError, match="unknown quantization type '99'"):
        parse_preset("99")


def test_tensor_type_names_parse_case_insensitively_and_only_as_targets() -> None:
    assert parse_ggml_type("q4_k") == GGMLType.Q4_K
    assert parse_ggml_type("IQ4_NL") == GGMLType.IQ4_NL
    assert parse_ggml_type(int(GGMLType.Q2_0)) == GGMLType.Q2_0
    with pytest.raises(PhiquantError, match="cannot be a quantization target"):
        parse_ggml_type("q8_k")
    with pytest.raises(PhiquantError, match="Did you mean Q6_K"):
        parse_ggml_type("q6k")


def test_quantize_targets_are_floats_and_block_types() -> None:
    roles = {info.role for info in TYPE_INFO.values() if info.is_quantize_target}
    assert roles == {TypeRole.FLOAT, TypeRole.QUANT}
    assert GGMLType.Q8_1 not in {t for t, info in TYPE_INFO.items() if info.is_quantize_target}
