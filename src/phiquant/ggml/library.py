"""The one place phiquant finds and loads the ggml libraries llama-cpp-python ships.

llama-cpp-python 0.3.36 splits ggml into libggml-base (types, tensors, graphs, quantization kernels),
libggml-cpu (the CPU backend: graph compute, SIMD row conversions) and libggml (the backend registry).
They are found beside llama_cpp's package without importing llama_cpp itself, so quantizing needs no
llama.cpp context.  GGML_NO_BACKTRACE is set before the first load so that an abort the wrappers failed
to prevent does not first spawn gdb to print a backtrace (ggml/src/ggml.c ggml_print_backtrace).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

from phiquant.errors import PhiquantError

BASE, CPU, REGISTRY = "ggml-base", "ggml-cpu", "ggml"
_FILE_NAME_PATTERNS = {"linux": "lib{}.so", "darwin": "lib{}.dylib", "win32": "{}.dll"}


def library_path(name: str) -> Path:
    """Where llama-cpp-python keeps lib<name> (name: BASE, CPU or REGISTRY)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise PhiquantError(
            "llama-cpp-python is not installed; phiquant needs it for ggml's kernels "
            "(pip install llama-cpp-python==0.3.36)"
        )
    file_name = _FILE_NAME_PATTERNS.get(sys.platform, "lib{}.so").format(name)
    return Path(next(iter(spec.submodule_search_locations))) / "lib" / file_name


def load_library(name: str) -> ctypes.CDLL:
    """A handle on lib<name>; a PhiquantError when it is missing or cannot be loaded.  Each binding
    module caches its own handle, so the argtypes one declares never meet another's (the shared object
    itself is loaded once).  ctypes.CDLL, not PyDLL: the kernels release the GIL, so calls from several
    threads run in parallel."""
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    path = library_path(name)
    if not path.is_file():
        raise PhiquantError(
            f"ggml library lib{name} not found; reinstall llama-cpp-python==0.3.36", path=path
        )
    try:
        return ctypes.CDLL(str(path))
    except OSError as error:
        raise PhiquantError(f"cannot load the ggml library: {error}", path=path) from None
