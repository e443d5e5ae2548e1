"""Reading llama.cpp's compute-graph tensors from Python, for the scheduler's evaluation callback.

llama.cpp calls `cb_eval(tensor, ask, user_data)` for every node of the graph it computes (ggml-backend.h,
ggml_backend_sched_eval_callback): with ask=true to learn whether we want the node's data, then, for
the nodes we wanted, with ask=false once the node is computed.  The callback receives a bare
`struct ggml_tensor *`; `GGMLTensor` mirrors that struct for the ggml this llama-cpp-python vendors
(ggml/include/ggml.h, GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64), and
the data is copied out with ggml_backend_tensor_get, which works for any backend buffer.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from phiquant.ggml.library import BASE, load_library

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GGMLTensor(ctypes.Structure):
    pass


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


@functools.cache
def _library() -> ctypes.CDLL:
    lib = load_library(BASE)
    tensor_pointer = ctypes.POINTER(GGMLTensor)
    # const char * ggml_op_desc(const struct ggml_tensor * t);  (op name; unary ops by their own name)
    lib.ggml_op_desc.argtypes = [tensor_pointer]
    lib.ggml_op_desc.restype = ctypes.c_char_p
    # size_t ggml_nbytes(const struct ggml_tensor * tensor);
    lib.ggml_nbytes.argtypes = [tensor_pointer]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    # size_t ggml_tensor_overhead(void);
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    # void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size);
    lib.ggml_backend_tensor_get.argtypes = [tensor_pointer, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    return lib


def check_struct_layout() -> None:
    """Fail loudly if the mirror's size differs from the library's (another ggml version)."""
    # ggml_tensor_overhead() = GGML_OBJECT_SIZE + GGML_TENSOR_SIZE; the object header is 32 bytes on
    # 64-bit builds (ggml.c struct ggml_object: offs, size, next, type, padding[4]).
    expected = _library().ggml_tensor_overhead() - 32
    if ctypes.sizeof(GGMLTensor) != expected:
        raise RuntimeError(
            f"ggml_tensor mirror is {ctypes.sizeof(GGMLTensor)} bytes, ggml's is {expected}: "
            "update phiquant/ggml/graph.py for this llama-cpp-python"
        )


def tensor_at(address: int) -> GGMLTensor:
    return ctypes.cast(address, ctypes.POINTER(GGMLTensor)).contents


def op_name(tensor: GGMLTensor) -> str:
    description: bytes = _library().ggml_op_desc(ctypes.byref(tensor)) or b""
    return description.decode()


def weight_name(tensor: GGMLTensor) -> str:
    """The weight's GGUF name; backends may decorate it as `CUDA0#blk.0.attn_k.weight#0`."""
    name: str = tensor.name.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def tensor_array(tensor: GGMLTensor, dtype: type[np.generic]) -> np.ndarray:
    """A copy of the tensor's data as a numpy array of shape (ne3, ne2, ne1, ne0), honouring its byte
    strides (views such as MUL_MAT_ID's expert ids are not contiguous)."""
    lib = _library()
    n_bytes = int(lib.ggml_nbytes(ctypes.byref(tensor)))
    raw = np.empty(n_bytes, dtype=np.uint8)
    lib.ggml_backend_tensor_get(ctypes.byref(tensor), raw.ctypes.data, 0, n_bytes)
    itemsize = np.dtype(dtype).itemsize
    shape = tuple(int(tensor.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(tensor.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    if int(tensor.nb[0]) != itemsize:
        raise RuntimeError(f"tensor {tensor.name!r}: element stride {tensor.nb[0]} is not {itemsize}")
    raw = np.concatenate([raw, np.zeros((-n_bytes) % itemsize, dtype=np.uint8)])
    view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides, writeable=False)
    return np.array(view)
