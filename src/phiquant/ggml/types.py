"""ggml's tensor types as data: enum ggml_type and each type's block layout and role.

The enum values mirror `ggml/include/ggml.h` (enum ggml_type) of the llama.cpp that llama-cpp-python
0.3.36 vendors.  Block sizes, block byte sizes, names and the imatrix requirement are checked against
libggml-base itself in tests/quant/test_types.py, so a new ggml that changes them fails loudly instead of
silently writing wrong sizes.  This is the one place a ggml type id is spelled.

The PyPI `gguf` 0.19.0 enum stops at Q1_0 (41); Q2_0 (42) lives only here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from phiquant.errors import PhiquantError


class GGMLType(enum.IntEnum):
    """enum ggml_type (ggml.h); gaps are types ggml removed."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42


# GGML_TYPE_COUNT: llama_model_quantize_params uses it to mean "no type forced".
GGML_TYPE_COUNT = 43


class TypeRole(enum.Enum):
    FLOAT = "float"  # F32/F16/BF16: ggml_quantize_chunk converts to them
    QUANT = "quant"  # block-quantized storage types ggml_quantize_chunk produces
    INTEGER = "integer"  # I8..I64/F64: valid in GGUF files, never a quantization target
    INTERNAL = "internal"  # Q8_1/Q8_K: dot-product scratch types; ggml_quantize_chunk aborts on them


@dataclass(frozen=True)
class TypeInfo:
    type: GGMLType
    ggml_name: str  # what ggml_type_name() returns (mixed case, e.g. "q4_K")
    block_size: int  # elements per block (ggml_blck_size)
    block_bytes: int  # bytes per block (ggml_type_size)
    role: TypeRole
    ggml_requires_imatrix: bool = False  # ggml_quantize_chunk asserts imatrix != NULL

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def is_quantized(self) -> bool:
        return self.role in (TypeRole.QUANT, TypeRole.INTERNAL)

    @property
    def is_quantize_target(self) -> bool:
        return self.role in (TypeRole.FLOAT, TypeRole.QUANT)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """ggml_row_size: only meaningful when n_per_row is a multiple of the block size."""
        return self.block_bytes * (n_per_row // self.block_size)


_F, _Q, _I, _X = TypeRole.FLOAT, TypeRole.QUANT, TypeRole.INTEGER, TypeRole.INTERNAL
T = GGMLType

# Block layouts written out as sums, as in ggml-common.h, so a reader can check them by eye.
# fmt: off
_TYPE_ROWS: tuple[TypeInfo, ...] = (
    #         type       ggml name   block  bytes per block               role  needs imatrix
    TypeInfo(T.F32,     "f32",        1,   4,                             _F),
    TypeInfo(T.F16,     "f16",        1,   2,                             _F),
    TypeInfo(T.BF16,    "bf16",       1,   2,                             _F),
    TypeInfo(T.Q4_0,    "q4_0",      32,   2 + 16,                        _Q),
    TypeInfo(T.Q4_1,    "q4_1",      32,   2 + 2 + 16,                    _Q),
    TypeInfo(T.Q5_0,    "q5_0",      32,   2 + 4 + 16,                    _Q),
    TypeInfo(T.Q5_1,    "q5_1",      32,   2 + 2 + 4 + 16,                _Q),
    TypeInfo(T.Q8_0,    "q8_0",      32,   2 + 32,                        _Q),
    TypeInfo(T.Q8_1,    "q8_1",      32,   2 + 2 + 32,                    _X),
    TypeInfo(T.Q2_K,    "q2_K",     256,   2 + 2 + 16 + 64,               _Q),
    TypeInfo(T.Q3_K,    "q3_K",     256,   2 + 32 + 64 + 12,              _Q),
    TypeInfo(T.Q4_K,    "q4_K",     256,   2 + 2 + 12 + 128,              _Q),
    TypeInfo(T.Q5_K,    "q5_K",     256,   2 + 2 + 12 + 32 + 128,         _Q),
    TypeInfo(T.Q6_K,    "q6_K",     256,   128 + 64 + 16 + 2,             _Q),
    TypeInfo(T.Q8_K,    "q8_K",     256,   4 + 256 + 32,                  _X),
    TypeInfo(T.IQ2_XXS, "iq2_xxs",  256,   2 + 64,                        _Q, True),
    TypeInfo(T.IQ2_XS,  "iq2_xs",   256,   2 + 64 + 8,                    _Q, True),
    TypeInfo(T.IQ2_S,   "iq2_s",    256,   2 + 64 + 16,                   _Q),
    TypeInfo(T.IQ3_XXS, "iq3_xxs",  256,   2 + 96,                        _Q),
    TypeInfo(T.IQ3_S,   "iq3_s",    256,   2 + 64 + 8 + 32 + 4,           _Q),
    TypeInfo(T.IQ1_S,   "iq1_s",    256,   2 + 32 + 16,                   _Q, True),
    TypeInfo(T.IQ1_M,   "iq1_m",    256,   32 + 16 + 8,                   _Q),
    TypeInfo(T.IQ4_NL,  "iq4_nl",    32,   2 + 16,                        _Q),
    TypeInfo(T.IQ4_XS,  "iq4_xs",   256,   2 + 2 + 4 + 128,               _Q),
    TypeInfo(T.TQ1_0,   "tq1_0",    256,   48 + 4 + 2,                    _Q),
    TypeInfo(T.TQ2_0,   "tq2_0",    256,   64 + 2,                        _Q),
    TypeInfo(T.MXFP4,   "mxfp4",     32,   1 + 16,                        _Q),
    TypeInfo(T.NVFP4,   "nvfp4",     64,   4 + 32,                        _Q),
    TypeInfo(T.Q1_0,    "q1_0",     128,   2 + 16,                        _Q),
    TypeInfo(T.Q2_0,    "q2_0",      64,   2 + 16,                        _Q),
    TypeInfo(T.I8,      "i8",         1,   1,                             _I),
    TypeInfo(T.I16,     "i16",        1,   2,                             _I),
    TypeInfo(T.I32,     "i32",        1,   4,                             _I),
    TypeInfo(T.I64,     "i64",        1,   8,                             _I),
    TypeInfo(T.F64,     "f64",        1,   8,                             _I),
)
# fmt: on

TYPE_INFO: dict[GGMLType, TypeInfo] = {row.type: row for row in _TYPE_ROWS}
QUANTIZE_TARGETS: tuple[GGMLType, ...] = tuple(row.type for row in _TYPE_ROWS if row.is_quantize_target)


def type_info(ggml_type: int) -> TypeInfo:
    """The table row for a ggml type value; a PhiquantError for values ggml does not define."""
    try:
        return TYPE_INFO[GGMLType(ggml_type)]
    except ValueError:
        raise PhiquantError(f"unknown ggml tensor type {ggml_type}") from None
