"""PyTorch pickle checkpoints (pytorch_model.bin), opened only on request and never running their code.

A pickle is a program: Python's pickle module calls whatever function the file names while it
loads (a `__reduce__` returning `os.system` is the classic payload).  phiquant reads safetensors by
default; pickles are opened only with --allow-pickle, and then only through torch's weights-only
unpickler, which rebuilds tensors and plain containers and refuses every other global.  torch
before 2.6 let a crafted file escape that loader (CVE-2025-32434), so older torch is refused.

Files are memory-mapped (`torch.load(mmap=True)`), so a tensor's bytes are read when it is
written, as with safetensors.  Only the zip format torch.save has written since PyTorch 1.6 can be
mapped; every Phi checkpoint that ships pickles (Phi-1, Phi-1.5, Phi-2 first uploads) uses it.
"""

from __future__ import annotations

import math
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phiquant.errors import PhiquantError

# The first torch whose weights-only loader has no known escape (CVE-2025-32434 was fixed in 2.6.0).
MIN_TORCH_VERSION = (2, 6)
INSTALL_HINT = "pip install 'phiquant[pickle]'"

# torch dtype name -> the dtype names SafetensorsEntry uses
TORCH_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}

# What torch.load raises on a corrupt or hostile file, found by fuzzing it
# (tests/security/test_fuzz_pickle.py): its zip reader raises RuntimeError, the unpickler
# UnpicklingError (a refused global) or the lookup errors of a damaged pickle stream.
LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    ValueError,  # UnicodeDecodeError included
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    EOFError,
    OverflowError,
    struct.error,  # a BINFLOAT/BININT opcode cut short
    AssertionError,  # torch raises it (not `assert`) for a persistent id that is not a tuple
    zipfile.BadZipFile,
    OSError,
)


@dataclass(frozen=True)
class PickleEntry:
    """One tensor of a pickle checkpoint, backed by torch's memory map of the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # PyTorch order: shape[-1] is the row length
    file: Path
    nbytes: int
    tensor: Any = field(repr=False, compare=False)  # a torch.Tensor over the file's memory map

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def read(self, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
        """Rows [row_start, row_stop) of the tensor viewed as 2-D (rows x last dim), as float32."""
        import torch

        row_length = self.shape[-1] if self.shape else 1
        n_rows = self.n_elements // row_length if row_length else 0
        row_stop = n_rows if row_stop is None else row_stop
        if not 0 <= row_start <= row_stop <= n_rows:
            raise IndexError(f"rows {row_start}:{row_stop} outside {self.name} with {n_rows} rows")
        if row_stop == row_start:
            return np.zeros((0, row_length), dtype=np.float32)
        rows = self.tensor.reshape(n_rows, row_length)[row_start:row_stop]
        # BF16 and F16 widen to float32 exactly; F64 rounds to nearest as numpy's astype does.
        values: np.ndarray = rows.to(torch.float32, copy=True).numpy()
        return values

    def read_ahead(self, row_start: int, row_stop: int) -> None:
        """No hint: torch owns this file's memory map (a pickle is a zip, not contiguous rows)."""


def import_torch() -> Any:
    """torch, if it is installed and new enough to load pickles safely."""
    try:
        import torch
    except ImportError:
        raise PhiquantError(
            f"--allow-pickle loads PyTorch checkpoints with torch's weights-only loader, and torch is not "
            f"installed: {INSTALL_HINT}"
        ) from None
    if _version_tuple(torch.__version__) < MIN_TORCH_VERSION:
        raise PhiquantError(
            f"torch {torch.__version__} is too old to load pickles safely (its weights-only loader can be "
            f"bypassed, CVE-2025-32434); install torch 2.6 or newer: {INSTALL_HINT}"
        )
    return torch


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def read_pickle_weights(path: Path) -> list[PickleEntry]:
    """Every tensor of one pickle weight file, loaded without executing code and checked."""
    torch = import_torch()
    if not _is_zip(path):
        raise PhiquantError(
            "not a PyTorch zip checkpoint (the format torch.save writes since PyTorch 1.6); phiquant "
            "cannot memory-map older pickles or raw pickle files",
            path=path,
        )
    state = _weights_only_load(torch, path)
    if not isinstance(state, dict):
        raise PhiquantError(f"holds a {type(state).__name__}, not a state dict of tensors", path=path)
    file_size = path.stat().st_size
    return [_entry(torch, name, tensor, path, file_size) for name, tensor in state.items()]


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # found by fuzzing: a damaged ZIP64 locator raises from is_zipfile
        return False


def _weights_only_load(torch: Any, path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it did not write
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise PhiquantError(
            f"refused: {_refused_global(exc)}; phiquant loads only tensors from pickles and never runs "
            "code from a checkpoint",
            path=path,
        ) from exc
    except LOAD_ERRORS as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PhiquantError(
            f"not a readable PyTorch checkpoint ({type(exc).__name__}: {first_line})", path=path
        ) from exc


def _refused_global(exc: pickle.UnpicklingError) -> str:
    """What the pickle asked for, from torch's message (which goes on to suggest weights_only=False,
    the very thing not to do with a file from a stranger)."""
    match = re.search(r"(?:GLOBAL|global:?)\s+([\w.]+)", str(exc))
    if match:
        return f"the pickle wants to call {match.group(1)}, which is not a tensor"
    first_line = (str(exc).strip().splitlines() or ["unpickling failed"])[0][:200]
    return f"the pickle holds more than tensors ({first_line})"


def _entry(torch: Any, name: object, tensor: object, path: Path, file_size: int) -> PickleEntry:
    def bad(problem: str) -> PhiquantError:
        return PhiquantError(f"tensor {name!r} {problem}", path=path)

    if not isinstance(name, str):
        raise PhiquantError(f"state dict key {name!r} is not a tensor name", path=path)
    if not isinstance(tensor, torch.Tensor):
        raise bad(f"is a {type(tensor).__name__}, not a tensor (phiquant reads flat state dicts)")
    dtype = TORCH_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
    if dtype is None:
        raise bad(f"has dtype {tensor.dtype}; phiquant reads {', '.join(TORCH_DTYPES)} weights")
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise bad(f"is a {tensor.layout} tensor on {tensor.device}, not a dense one")
    nbytes = tensor.numel() * tensor.element_size()
    storage_bytes = tensor.untyped_storage().nbytes()
    # torch checks that sizes and strides stay inside the storage; it allows strides of 0, which
    # let a few bytes pose as an enormous tensor.  A real weight has a byte in storage per element.
    if nbytes > storage_bytes - tensor.storage_offset() * tensor.element_size() or storage_bytes > file_size:
        raise bad(f"claims {nbytes} bytes but its storage holds {storage_bytes}")
    return PickleEntry(name, dtype, tuple(int(d) for d in tensor.shape), path, nbytes, tensor)
