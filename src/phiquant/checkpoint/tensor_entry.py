"""What an arch module sees of one checkpoint tensor, whichever file format holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class TensorEntry(Protocol):
    """A checkpoint tensor whose dtype and shape are known and checked before any byte is read.

    `shape` is in PyTorch order (shape[-1] is the row length); `read(row_start, row_stop)` returns
    those rows of the tensor viewed as 2-D, as float32; `read_ahead(row_start, row_stop)` hints that
    those rows will be read soon.  SafetensorsEntry and PickleEntry are the two implementations.
    """

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...  # "BF16", "F16", "F32" or "F64"

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def file(self) -> Path: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def n_elements(self) -> int: ...

    def read(self, row_start: int = 0, row_stop: int | None = None) -> np.ndarray: ...

    def read_ahead(self, row_start: int, row_stop: int) -> None: ...
