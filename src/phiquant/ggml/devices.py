"""Which accelerators llama.cpp can use here, and how much memory each has free.

llama-cpp-python exposes `llama_supports_gpu_offload` but not ggml's device registry, so the few
registry functions `--gpu-layers auto` needs are bound here (ggml/include/ggml-backend.h), from the
libggml that llama-cpp-python ships.  A CPU-only build lists only the CPU device.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import llama_cpp as lc

from phiquant.errors import PhiquantError
from phiquant.ggml.library import REGISTRY, load_library

# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_TYPE_CPU = 0
DEVICE_TYPE_GPU = 1
DEVICE_TYPE_IGPU = 2
_OFFLOAD_TYPES = {DEVICE_TYPE_GPU, DEVICE_TYPE_IGPU}


@dataclass(frozen=True)
class GpuDevice:
    name: str
    description: str
    free_bytes: int
    total_bytes: int


@functools.cache
def _registry() -> ctypes.CDLL | None:
    try:
        lib = load_library(REGISTRY)
    except PhiquantError:
        return None
    # size_t ggml_backend_dev_count(void);
    lib.ggml_backend_dev_count.argtypes, lib.ggml_backend_dev_count.restype = [], ctypes.c_size_t
    # ggml_backend_dev_t ggml_backend_dev_get(size_t index);
    lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    # enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
    lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    # const char * ggml_backend_dev_name(ggml_backend_dev_t device);  (and _description)
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_void_p], ctypes.c_char_p
    # void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def supports_gpu_offload() -> bool:
    return bool(lc.llama_supports_gpu_offload())


def gpu_devices() -> list[GpuDevice]:
    """The GPUs llama.cpp would offload to, with their free memory now; empty on CPU-only builds."""
    if not supports_gpu_offload():
        return []
    lib = _registry()
    if lib is None:
        return []
    devices = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) not in _OFFLOAD_TYPES:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            GpuDevice(
                name=(lib.ggml_backend_dev_name(device) or b"").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(device) or b"").decode(errors="replace"),
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return devices
