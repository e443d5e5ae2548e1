"""Reading safetensors files lazily, without torch, with every header field checked first.

The `safetensors` package's numpy path cannot read BF16 (numpy has no bfloat16), and Phi
checkpoints are BF16, so the header is parsed here and tensor bytes are read through short-lived
memory maps.  The format: 8 bytes little-endian header length N, N bytes of JSON, then the data
section; each JSON entry names a dtype, a shape and [begin, end) offsets into the data section.

Everything that could make a crafted file read out of bounds or allocate wildly is checked
before any tensor byte is touched: header length against the file size, offsets against the
data section, byte counts against shape x dtype, overlaps, duplicate names.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiquant.checkpoint.read_ahead import read_ahead
from phiquant.errors import PhiquantError

# safetensors' own reference implementation refuses headers above 100 MB.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# dtype name -> (bytes per element, numpy dtype used to read the raw bytes)
DTYPES: dict[str, tuple[int, str]] = {
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, "<u2"),
    "F64": (8, "<f8"),
}

# How phiquant refers to pickled PyTorch weights, for the refusal message.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor in a safetensors file: where its bytes are and how to read them."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # PyTorch order: shape[-1] is the row length
    file: Path
    data_start: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def read(self, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
        """Rows [row_start, row_stop) of the tensor viewed as 2-D (rows x last dim), as float32.

        A memory map covers only the requested rows and is released on return, so resident
        memory stays near the size of what was asked for.
        """
        row_length = self.shape[-1] if self.shape else 1
        n_rows = self.n_elements // row_length if row_length else 0
        row_stop = n_rows if row_stop is None else row_stop
        if not 0 <= row_start <= row_stop <= n_rows:
            raise IndexError(f"rows {row_start}:{row_stop} outside {self.name} with {n_rows} rows")
        itemsize, raw_dtype = DTYPES[self.dtype]
        count = (row_stop - row_start) * row_length
        if count == 0:
            return np.zeros((row_stop - row_start, row_length), dtype=np.float32)
        offset = self.data_start + row_start * row_length * itemsize
        raw = np.memmap(self.file, dtype=raw_dtype, mode="r", offset=offset, shape=(count,))
        try:
            values = _to_float32(raw, self.dtype)
        finally:
            del raw
        return values.reshape(row_stop - row_start, row_length)

    def read_ahead(self, row_start: int, row_stop: int) -> None:
        """Hint that rows [row_start, row_stop) will be read soon (checkpoint.read_ahead)."""
        row_length = self.shape[-1] if self.shape else 1
        row_bytes = row_length * DTYPES[self.dtype][0]
        start = self.data_start + max(0, row_start) * row_bytes
        stop = min(self.data_start + self.nbytes, self.data_start + row_stop * row_bytes)
        read_ahead(self.file, start, stop - start)


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # BF16 is the top half of an IEEE float32, so widening is an exact shift (one pass).
        widened = np.empty(raw.shape, dtype=np.uint32)
        np.left_shift(raw, 16, out=widened, dtype=np.uint32)
        return widened.view(np.float32)
    return raw.astype(np.float32)


def read_safetensors_header(path: Path) -> list[SafetensorsEntry]:
    """Parse and validate a safetensors header; return its tensors in data-offset order."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise PhiquantError(
                    "not a safetensors file: shorter than its 8-byte header length", path=path
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise PhiquantError(
                    f"corrupt safetensors header: claims {header_len} header bytes", path=path
                )
            if 8 + header_len > file_size:
                raise PhiquantError(
                    f"corrupt or truncated safetensors file: header needs {header_len} bytes but the file "
                    f"has {file_size - 8} after the length",
                    path=path,
                )
            header_bytes = f.read(header_len)
    except OSError as exc:
        raise PhiquantError(f"cannot read safetensors file: {exc.strerror}", path=path) from exc
    header = _parse_header_json(header_bytes, path)
    data_start = 8 + header_len
    entries = [
        _parse_entry(name, spec, path, data_start, file_size - data_start)
        for name, spec in header.items()
        if name != "__metadata__"
    ]
    _check_no_overlap(entries, path)
    return sorted(entries, key=lambda e: e.data_start)


def _parse_header_json(header_bytes: bytes, path: Path) -> dict[str, object]:
    def reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result:
                raise PhiquantError(f"corrupt safetensors header: tensor {key!r} appears twice", path=path)
            result[key] = value
        return result

    try:
        text = header_bytes.decode("utf-8")
        header = json.loads(text, object_pairs_hook=reject_duplicates)
    except RecursionError:  # found by fuzzing: "[[[[...]]]]" deeper than Python's stack
        raise PhiquantError("corrupt safetensors header: JSON nested too deeply", path=path) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers past Python's digit limit
        raise PhiquantError(f"corrupt safetensors header: not valid JSON ({exc})", path=path) from exc
    if not isinstance(header, dict):
        raise PhiquantError("corrupt safetensors header: not a JSON object", path=path)
    return header


def _parse_entry(name: str, spec: object, path: Path, data_start: int, data_size: int) -> SafetensorsEntry:
    def bad(problem: str) -> PhiquantError:
        return PhiquantError(f"corrupt safetensors header: tensor {name!r} {problem}", path=path)

    if not isinstance(spec, dict):
        raise bad("is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("has no dtype")
    if dtype not in DTYPES:
        raise PhiquantError(
            f"tensor {name!r} has dtype {dtype}; phiquant reads {', '.join(DTYPES)} weights", path=path
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise PhiquantError(
            f"truncated or corrupt safetensors file: tensor {name!r} ends at byte {end} of a "
            f"{data_size}-byte data section",
            path=path,
        )
    expected = math.prod(shape) * DTYPES[dtype][0]
    if end - begin != expected:
        raise bad(f"holds {end - begin} bytes but shape {shape} of {dtype} needs {expected}")
    return SafetensorsEntry(name, dtype, tuple(shape), path, data_start + begin, end - begin)


def _is_count(value: object) -> bool:
    """A JSON integer >= 0 (JSON's true is a Python int too, and no dimension)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_no_overlap(entries: list[SafetensorsEntry], path: Path) -> None:
    ordered = sorted((e for e in entries if e.nbytes), key=lambda e: e.data_start)
    for before, after in zip(ordered, ordered[1:]):
        if before.data_start + before.nbytes > after.data_start:
            raise PhiquantError(
                f"corrupt safetensors header: tensors {before.name!r} and {after.name!r} overlap", path=path
            )


def is_pickle_weight_file(path: Path) -> bool:
    return path.suffix in PICKLE_SUFFIXES and path.is_file()


def file_size(path: Path) -> int:
    return os.stat(path).st_size
