"""A small, strict GGUF reader: header, key/values in file order, tensor infos and raw tensor bytes.

Why not gguf.GGUFReader: the PyPI gguf 0.19.0 cannot open files holding Q2_0 tensors (type 42 is missing
from its enum), and it answers a truncated file with assorted numpy errors.  This reader knows every type
in phiquant.quant.types, checks each length against the file size before trusting it, and turns any
malformed input into a PhiquantError naming the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.quant.types import GGMLType, type_info

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# gguf_type (ggml/include/gguf.h) -> struct format of one scalar.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                   11: "<q", 12: "<d"}
GGUF_UINT32, GGUF_STRING, GGUF_ARRAY = 4, 8, 9
_STRING, _ARRAY = GGUF_STRING, GGUF_ARRAY


@dataclass(frozen=True)
class KeyValue:
    value_type: int          # gguf_type of the value (for arrays: 9)
    value: Any               # int/float/bool/str, or a list for arrays
    element_type: int | None = None   # for arrays: the gguf_type of the elements


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml ne order, as stored
    type: GGMLType
    offset: int              # relative to the data section

    @property
    def n_bytes(self) -> int:
        n_rows = 1
        for size in self.shape[1:]:
            n_rows *= size
        return n_rows * type_info(self.type).row_bytes(self.shape[0])


@dataclass(frozen=True)
class GGUFLayout:
    path: Path
    version: int
    metadata: dict[str, KeyValue]       # insertion order = file order
    tensors: tuple[TensorInfo, ...]     # file order
    alignment: int
    data_offset: int
    file_size: int

    def tensor(self, name: str) -> TensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise PhiquantError(f"no tensor named {name!r}", path=self.path)

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.metadata.get(key)
        return default if entry is None else entry.value


class _Cursor:
    def __init__(self, buffer: mmap.mmap | bytes, path: Path) -> None:
        self.buffer, self.path, self.position = buffer, path, 0

    def take(self, n_bytes: int, what: str) -> bytes:
        end = self.position + n_bytes
        if n_bytes < 0 or end > len(self.buffer):
            raise PhiquantError(f"truncated or corrupt GGUF file: {what} at byte {self.position} runs past "
                                f"the end of the file ({len(self.buffer)} bytes)", path=self.path)
        chunk = self.buffer[self.position:end]
        self.position = end
        return chunk

    def scalar(self, value_type: int, what: str) -> Any:
        fmt = _SCALAR_FORMATS[value_type]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.scalar(10, what)
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PhiquantError(f"corrupt GGUF file: {what} is not UTF-8", path=self.path) from None

    def value(self, value_type: int, what: str) -> Any:
        if value_type == _STRING:
            return self.string(what)
        if value_type in _SCALAR_FORMATS:
            return self.scalar(value_type, what)
        raise PhiquantError(f"corrupt GGUF file: {what} has unknown value type {value_type}", path=self.path)


def _read_key_value(cursor: _Cursor) -> tuple[str, KeyValue]:
    key = cursor.string("metadata key")
    value_type = cursor.scalar(4, f"type of {key}")
    if value_type != _ARRAY:
        return key, KeyValue(value_type, cursor.value(value_type, key))
    element_type = cursor.scalar(4, f"element type of {key}")
    count = cursor.scalar(10, f"length of {key}")
    if element_type in _SCALAR_FORMATS:
        fmt = _SCALAR_FORMATS[element_type]
        raw = cursor.take(count * struct.calcsize(fmt), key)
        values = np.frombuffer(raw, dtype=np.dtype(fmt)).tolist()
    elif element_type == _STRING:
        if count > len(cursor.buffer):  # each string takes at least 8 bytes; refuse absurd counts early
            cursor.take(count, key)
        values = [cursor.string(key) for _ in range(count)]
    else:
        raise PhiquantError(f"corrupt GGUF file: array {key} has element type {element_type}",
                            path=cursor.path)
    return key, KeyValue(_ARRAY, values, element_type)


def _read_tensor_info(cursor: _Cursor) -> TensorInfo:
    name = cursor.string("tensor name")
    n_dims = cursor.scalar(4, f"dimensions of {name}")
    if not 1 <= n_dims <= 4:
        raise PhiquantError(f"corrupt GGUF file: tensor {name} has {n_dims} dimensions", path=cursor.path)
    shape = tuple(cursor.scalar(10, f"shape of {name}") for _ in range(n_dims))
    raw_type = cursor.scalar(4, f"type of {name}")
    try:
        ggml_type = GGMLType(raw_type)
    except ValueError:
        raise PhiquantError(f"tensor {name} has unknown ggml type {raw_type}", path=cursor.path) from None
    if shape[0] % type_info(ggml_type).block_size:
        raise PhiquantError(f"corrupt GGUF file: tensor {name} rows of {shape[0]} are not whole "
                            f"{ggml_type.name} blocks", path=cursor.path)
    return TensorInfo(name, shape, ggml_type, cursor.scalar(10, f"offset of {name}"))


def read_gguf_layout(path: str | os.PathLike[str]) -> GGUFLayout:
    """Parse a GGUF file's header; tensor data is not read."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            buffer: mmap.mmap | bytes = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as error:
        raise PhiquantError(f"cannot read GGUF file: {error.strerror}", path=path) from None
    try:
        return _parse(_Cursor(buffer, path), path, size)
    finally:
        if isinstance(buffer, mmap.mmap):
            buffer.close()


def _parse(cursor: _Cursor, path: Path, size: int) -> GGUFLayout:
    magic = cursor.take(4, "magic") if size >= 4 else b""
    if magic != GGUF_MAGIC:
        raise PhiquantError("not a GGUF file (bad magic)", path=path)
    version = cursor.scalar(4, "version")
    if version not in (2, 3):
        raise PhiquantError(f"unsupported GGUF version {version}", path=path)
    n_tensors = cursor.scalar(10, "tensor count")
    n_kv = cursor.scalar(10, "metadata count")
    metadata: dict[str, KeyValue] = {}
    for _ in range(n_kv):
        key, entry = _read_key_value(cursor)
        if key in metadata:
            raise PhiquantError(f"corrupt GGUF file: duplicate metadata key {key}", path=path)
        metadata[key] = entry
    tensors = tuple(_read_tensor_info(cursor) for _ in range(n_tensors))
    alignment_entry = metadata.get("general.alignment")
    alignment = alignment_entry.value if alignment_entry is not None else DEFAULT_ALIGNMENT
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise PhiquantError(f"corrupt GGUF file: general.alignment {alignment!r}", path=path)
    data_offset = -(-cursor.position // alignment) * alignment
    for info in tensors:
        if data_offset + info.offset + info.n_bytes > size:
            raise PhiquantError(f"truncated GGUF file: tensor {info.name} runs past the end of the file",
                                path=path)
    return GGUFLayout(path, version, metadata, tensors, alignment, data_offset, size)


def read_tensor_bytes(layout: GGUFLayout, info: TensorInfo) -> np.ndarray:
    """The raw bytes of one tensor (a read-only memory map; copy it to keep it past the file)."""
    if info.n_bytes == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(layout.path, dtype=np.uint8, mode="r", offset=layout.data_offset + info.offset,
                     shape=(info.n_bytes,))


@dataclass(frozen=True)
class TensorToWrite:
    name: str
    shape: tuple[int, ...]      # ggml ne order
    type: GGMLType
    data: bytes | np.ndarray    # raw bytes, exactly the tensor's size


def _pack_value(value_type: int, value: Any, element_type: int | None) -> bytes:
    if value_type == _STRING:
        raw = value.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw
    if value_type == _ARRAY:
        assert element_type is not None
        items = b"".join(_pack_value(element_type, item, None) for item in value)
        return struct.pack("<IQ", element_type, len(value)) + items
    return struct.pack(_SCALAR_FORMATS[value_type], value)


def _byte_view(data: bytes | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
    return memoryview(data).cast("B")


def write_gguf(path: str | os.PathLike[str], metadata: dict[str, KeyValue],
               tensors: list[TensorToWrite]) -> None:
    """Write a GGUF v3 file (alignment 32, zero padding after every tensor) atomically: a temporary file
    next to `path` is renamed over it once complete.  Unlike gguf.GGUFWriter this writes exactly the keys
    given (no general.architecture) and allows empty arrays, as llama.cpp's own writer does."""
    path = Path(path)
    header = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, entry in metadata.items():
        header += _pack_value(_STRING, key, None) + struct.pack("<I", entry.value_type)
        header += _pack_value(entry.value_type, entry.value, entry.element_type)
    offset = 0
    for tensor in tensors:
        expected = TensorInfo(tensor.name, tensor.shape, tensor.type, 0).n_bytes
        if len(_byte_view(tensor.data)) != expected:
            raise ValueError(f"{tensor.name}: {expected} bytes expected for shape {tensor.shape}")
        header += _pack_value(_STRING, tensor.name, None)
        n_dims = len(tensor.shape)
        header += struct.pack(f"<I{n_dims}QIQ", n_dims, *tensor.shape, tensor.type, offset)
        offset += -(-expected // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "wb") as file:
            file.write(header + bytes(-len(header) % DEFAULT_ALIGNMENT))
            for tensor in tensors:
                raw = _byte_view(tensor.data)
                file.write(raw)
                file.write(bytes(-len(raw) % DEFAULT_ALIGNMENT))
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise PhiquantError(f"cannot write GGUF file: {error.strerror}", path=path) from None
