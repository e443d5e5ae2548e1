"""ctypes binding to ggml's quantization kernels in llama-cpp-python's libggml-base.

Every binding has the same shape: the C prototype (ggml/include/ggml.h) as a comment, argtypes and
restype (int64_t as c_int64, size_t as c_size_t), and a typed wrapper.

ggml answers bad input with GGML_ASSERT, which calls abort() and takes the Python process with it.  The
wrappers therefore check everything ggml would assert on (storage type, imatrix present and finite for
the types that need one, rows a multiple of the block, buffer sizes) before calling, and raise
PhiquantError instead.  GGML_NO_BACKTRACE is set before loading so that an abort we failed to prevent does
not first spawn gdb to print a backtrace (ggml/src/ggml.c ggml_print_backtrace).

The kernels release the GIL (ctypes.CDLL, not PyDLL), so calls from several Python threads run in parallel.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.ggml.library import BASE, CPU, load_library
from phiquant.ggml.types import GGMLType, TypeInfo, TypeRole, type_info


@functools.cache
def _library() -> ctypes.CDLL:
    lib = load_library(BASE)
    _declare(lib)
    return lib


# void ggml_cpu_fp32_to_fp16(const float * x, ggml_fp16_t * y, int64_t n);
# void ggml_cpu_fp32_to_bf16(const float * x, ggml_bf16_t * y, int64_t n);
_FloatRowConverter = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.cache
def _cpu_float_converters() -> dict[GGMLType, _FloatRowConverter]:
    """The CPU backend's SIMD float32 -> F16/BF16 row conversions (libggml-cpu).

    ggml_quantize_chunk converts F16/BF16 with ggml-base's portable code, which is several times
    slower; the SIMD versions round the same way (round to nearest even), so the bytes are the same
    (tests/quant/test_ggml.py checks it).  Missing symbols (other builds) fall back to ggml-base.
    """
    try:
        lib = load_library(CPU)
    except PhiquantError:
        return {}
    converters = {}
    for ggml_type, symbol in (
        (GGMLType.F16, "ggml_cpu_fp32_to_fp16"),
        (GGMLType.BF16, "ggml_cpu_fp32_to_bf16"),
    ):
        address = (
            ctypes.cast(getattr(lib, symbol, None), ctypes.c_void_p).value if hasattr(lib, symbol) else None
        )
        if address:
            converters[ggml_type] = _FloatRowConverter(address)
    return converters


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits {
    #     const char * type_name; int64_t blck_size; int64_t blck_size_interleave; size_t type_size;
    #     bool is_quantized; ggml_to_float_t to_float; ggml_from_float_t from_float_ref;
    # };
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


# typedef void (*ggml_to_float_t)(const void * x, float * y, int64_t k);
_ToFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def _declare(lib: ctypes.CDLL) -> None:
    c_type = ctypes.c_int  # enum ggml_type
    signatures: dict[str, tuple[list[type], type | None]] = {
        # size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst, int64_t start,
        #                            int64_t nrows, int64_t n_per_row, const float * imatrix);
        "ggml_quantize_chunk": (
            [
                c_type,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
            ],
            ctypes.c_size_t,
        ),
        # void ggml_quantize_init(enum ggml_type type);
        "ggml_quantize_init": ([c_type], None),
        # bool ggml_quantize_requires_imatrix(enum ggml_type type);
        "ggml_quantize_requires_imatrix": ([c_type], ctypes.c_bool),
        # size_t ggml_row_size(enum ggml_type type, int64_t ne);
        "ggml_row_size": ([c_type, ctypes.c_int64], ctypes.c_size_t),
        # int64_t ggml_blck_size(enum ggml_type type);
        "ggml_blck_size": ([c_type], ctypes.c_int64),
        # size_t ggml_type_size(enum ggml_type type);
        "ggml_type_size": ([c_type], ctypes.c_size_t),
        # bool ggml_is_quantized(enum ggml_type type);
        "ggml_is_quantized": ([c_type], ctypes.c_bool),
        # const char * ggml_type_name(enum ggml_type type);
        "ggml_type_name": ([c_type], ctypes.c_char_p),
        # bool ggml_validate_row_data(enum ggml_type type, const void * data, size_t nbytes);
        "ggml_validate_row_data": ([c_type, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_bool),
        # const struct ggml_type_traits * ggml_get_type_traits(enum ggml_type type);
        "ggml_get_type_traits": ([c_type], ctypes.POINTER(_TypeTraits)),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype


# Every wrapper looks the type up in phiquant's table first (type_info raises for values ggml does not
# define), because ggml indexes its own table with the value unchecked.


def row_size(ggml_type: int, n_per_row: int) -> int:
    """Bytes of one row of n_per_row elements (ggml_row_size)."""
    info = type_info(ggml_type)
    _require_whole_blocks(info, n_per_row)
    return int(_library().ggml_row_size(info.type, n_per_row))


def block_size(ggml_type: int) -> int:
    """Elements per block (ggml_blck_size)."""
    return int(_library().ggml_blck_size(type_info(ggml_type).type))


def type_size(ggml_type: int) -> int:
    """Bytes per block (ggml_type_size)."""
    return int(_library().ggml_type_size(type_info(ggml_type).type))


def is_quantized(ggml_type: int) -> bool:
    return bool(_library().ggml_is_quantized(type_info(ggml_type).type))


def type_name(ggml_type: int) -> str:
    """ggml's own spelling, e.g. "q4_K"."""
    return _library().ggml_type_name(type_info(ggml_type).type).decode()


def quantize_requires_imatrix(ggml_type: int) -> bool:
    """True where ggml_quantize_chunk aborts without an imatrix (IQ2_XXS, IQ2_XS, IQ1_S)."""
    return bool(_library().ggml_quantize_requires_imatrix(type_info(ggml_type).type))


def quantize_init(ggml_type: int) -> None:
    """Builds the IQ lookup tables once; quantize_chunk would otherwise do it on its first call."""
    info = _require_quantize_target(ggml_type)
    _library().ggml_quantize_init(info.type)


def validate_row_data(ggml_type: int, data: np.ndarray) -> bool:
    """ggml's own check of quantized bytes (rejects NaN/inf scales); what llama.cpp runs after each chunk."""
    info = type_info(ggml_type)
    buffer = _contiguous(data, np.uint8, "data")
    if buffer.nbytes % info.block_bytes:
        return False
    return bool(_library().ggml_validate_row_data(info.type, buffer.ctypes.data, buffer.nbytes))


def quantize_chunk(
    ggml_type: int, rows: np.ndarray, imatrix: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Quantize a 2-D float32 array of rows with ggml_quantize_chunk; returns rows x row_bytes uint8.

    `imatrix` is one weight per column (length n_per_row) or None.  `out`, if given, is a contiguous
    uint8 array of that shape to write into (saves a copy when the caller assembles a tensor).
    """
    info = _require_quantize_target(ggml_type)
    source = _contiguous(rows, np.float32, "rows")
    if source.ndim != 2:
        raise PhiquantError(f"expected a 2-D array of rows, got shape {source.shape}")
    n_rows, n_per_row = source.shape
    _require_whole_blocks(info, n_per_row)
    weights = _checked_imatrix(info, imatrix, n_per_row)
    shape = (n_rows, info.row_bytes(n_per_row))
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous uint8 array of shape {shape}")
    if n_rows == 0:
        return out
    simd = _cpu_float_converters().get(info.type)
    if simd is not None and weights is None:
        simd(source.ctypes.data, out.ctypes.data, source.size)
        return out
    written = _library().ggml_quantize_chunk(
        info.type,
        source.ctypes.data,
        out.ctypes.data,
        0,
        n_rows,
        n_per_row,
        None if weights is None else weights.ctypes.data,
    )
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out


def dequantize(ggml_type: int, data: np.ndarray, n_elements: int) -> np.ndarray:
    """Decode n_elements values of `ggml_type` to float32 with ggml's own to_float (type traits)."""
    info = type_info(ggml_type)
    buffer = _contiguous(data, np.uint8, "data")
    _require_whole_blocks(info, n_elements)
    if buffer.nbytes != info.row_bytes(n_elements):
        raise PhiquantError(
            f"{info.name}: {n_elements} values take {info.row_bytes(n_elements)} bytes, got {buffer.nbytes}"
        )
    if info.type == GGMLType.F32:
        return buffer.view(np.float32).copy()
    traits = _library().ggml_get_type_traits(info.type).contents
    if not traits.to_float:
        raise PhiquantError(f"ggml cannot decode {info.name} tensors")
    out = np.empty(n_elements, dtype=np.float32)
    _ToFloat(traits.to_float)(buffer.ctypes.data, out.ctypes.data, n_elements)
    return out


def _require_quantize_target(ggml_type: int) -> TypeInfo:
    info = type_info(ggml_type)
    if not info.is_quantize_target:
        raise PhiquantError(
            f"ggml cannot quantize to {info.name}"
            + (" (an internal dot-product type)" if info.role is TypeRole.INTERNAL else "")
        )
    return info


def _require_whole_blocks(info: TypeInfo, n_per_row: int) -> None:
    if n_per_row < 0 or n_per_row % info.block_size:
        raise PhiquantError(
            f"{info.name} stores blocks of {info.block_size} values; "
            f"a row of {n_per_row} values is not a whole number of blocks"
        )


def _checked_imatrix(info: TypeInfo, imatrix: np.ndarray | None, n_per_row: int) -> np.ndarray | None:
    if imatrix is None:
        if info.ggml_requires_imatrix:
            raise PhiquantError(f"{info.name} needs an importance matrix (ggml would abort without one)")
        return None
    weights = _contiguous(imatrix, np.float32, "imatrix")
    if weights.shape != (n_per_row,):
        raise PhiquantError(
            f"imatrix has shape {weights.shape}, expected ({n_per_row},) for rows of {n_per_row} values"
        )
    if not np.isfinite(weights).all():
        raise PhiquantError("imatrix contains NaN or infinite values")
    return weights


def _contiguous(array: np.ndarray, dtype: type[np.generic], what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        raise PhiquantError(f"{what} must be a numpy {np.dtype(dtype).name} array")
    return np.ascontiguousarray(array)
