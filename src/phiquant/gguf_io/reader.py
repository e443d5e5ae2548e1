"""A GGUF reader that treats the file as untrusted.

gguf's GGUFReader trusts counts and offsets and cannot open files holding types newer than its
enum (Q2_0 in the llama.cpp that llama-cpp-python 0.3.36 vendors), so phiquant parses the header
itself: every count, length, offset and alignment is checked against the bytes that remain before
it is used, so a crafted file cannot make phiquant allocate more than the file could hold.
Tensor data stays on disk and is read through memory maps on demand.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io.key_types import validate_known_keys
from phiquant.model_source import Metadatum

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS

# Parsed metadata takes several times its bytes in Python objects (a 4-byte float in a list costs
# 32), so counts are also bounded outright: a crafted file of millions of tiny entries must not
# turn a gigabyte on disk into tens in memory.  The limits are far above any real model's
# (Gemma 3's 262k-token vocabulary needs under a million array elements in all; the largest MoE
# GGUFs hold a few thousand tensors and a hundred or so keys).
MAX_TENSORS = 1 << 16
MAX_METADATA_KEYS = 1 << 16
MAX_ARRAY_ELEMENTS = 1 << 22  # over all metadata arrays together

# ggml type id -> (block size, bytes per block).  gguf 0.19's table plus the types it lacks.
TYPE_SIZES: dict[int, tuple[int, int]] = {int(t): size for t, size in GGML_QUANT_SIZES.items()}
TYPE_SIZES[42] = (64, 18)  # Q2_0, ggml.h

SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml ne order
    ggml_type: int
    offset: int  # absolute offset of the first byte in the file
    nbytes: int
    file: Path | None = None  # the shard holding it, for a split model; None: the model's file


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: list[Metadatum]
    tensors: list[GGUFTensor]
    alignment: int
    data_offset: int
    shards: list[Path] = field(default_factory=list)  # every file of a split model, first first
    _by_key: dict[str, Metadatum] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {item.key: item for item in self.metadata}
        self.shards = self.shards or [self.path]

    def get(self, key: str, default: Any = None) -> Any:
        item = self._by_key.get(key)
        return default if item is None else item.value

    def require(self, key: str) -> Any:
        if key not in self._by_key:
            raise PhiquantError(f"GGUF metadata has no {key!r}", path=self.path)
        return self._by_key[key].value

    @property
    def arch(self) -> str:
        arch = self.require("general.architecture")
        if not isinstance(arch, str):
            raise PhiquantError("general.architecture is not a string", path=self.path)
        return arch

    @property
    def file_size(self) -> int:
        """Bytes on disk, over all shards of a split model."""
        return sum(shard.stat().st_size for shard in self.shards)

    @property
    def is_split(self) -> bool:
        return len(self.shards) > 1

    def file_of(self, tensor: GGUFTensor) -> Path:
        return tensor.file or self.path

    def tensor(self, name: str) -> GGUFTensor:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise PhiquantError(f"no tensor {name!r} in this GGUF file", path=self.path)

    def raw_bytes(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 memory map (released when dropped)."""
        if tensor.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(
            self.file_of(tensor), dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.nbytes,)
        )


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, or the headers of every shard of a split model given its first
    shard (gguf_io.split); raise PhiquantError naming the file on anything malformed."""
    first = read_gguf_file(path)
    # llama.cpp loads other shards only when split.count > 1; llama-gguf-split --merge leaves 0.
    if first.get("split.count") in (None, 0, 1):
        return first
    from phiquant.gguf_io.split import join_shards

    return join_shards(first, read_gguf_file)


def read_gguf_file(path: str | Path) -> GGUFFile:
    """Parse one file's header; each tensor's `file` is set when the file is a shard."""
    path = Path(path)
    if not path.exists():
        raise PhiquantError("no such file", path=path)
    if not path.is_file():
        raise PhiquantError("not a GGUF file (it is a directory)", path=path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise PhiquantError("not a GGUF file: too short", path=path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return _HeaderParser(path, view, size).parse()
    except OSError as exc:
        raise PhiquantError(f"cannot read: {exc.strerror}", path=path) from exc


class _HeaderParser:
    def __init__(self, path: Path, view: mmap.mmap, size: int):
        self.path, self.view, self.size, self.pos = path, view, size, 0
        self.array_elements = 0

    def fail(self, problem: str) -> PhiquantError:
        return PhiquantError(f"corrupt or truncated GGUF file: {problem}", path=self.path)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file (offset {self.pos}, {n} bytes)")
        data = self.view[self.pos : self.pos + n]
        self.pos += n
        return data

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.scalar("<Q", f"length of {what}")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def parse(self) -> GGUFFile:
        if self.take(4, "magic") != GGUF_MAGIC:
            raise PhiquantError("not a GGUF file (bad magic bytes)", path=self.path)
        version = self.scalar("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            raise PhiquantError(f"unsupported GGUF version {version}", path=self.path)
        n_tensors = self.scalar("<Q", "tensor count")
        n_kv = self.scalar("<Q", "metadata count")
        remaining = self.size - self.pos
        # Each key/value needs at least 12 bytes and each tensor info at least 32.
        if n_kv * 12 > remaining or n_tensors * 32 > remaining:
            raise self.fail(f"claims {n_kv} metadata entries and {n_tensors} tensors in {remaining} bytes")
        if n_kv > MAX_METADATA_KEYS or n_tensors > MAX_TENSORS:
            raise self.fail(
                f"claims {n_kv} metadata entries and {n_tensors} tensors; phiquant reads at most "
                f"{MAX_METADATA_KEYS} and {MAX_TENSORS}, far more than any model has"
            )
        metadata = [self.key_value(i) for i in range(n_kv)]
        keys = [m.key for m in metadata]
        if len(set(keys)) != len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise self.fail(f"metadata key {duplicate!r} appears twice")
        problem = validate_known_keys({m.key: (m.value, m.value_type, m.sub_type) for m in metadata})
        if problem:
            raise PhiquantError(problem, path=self.path)
        alignment = self.alignment(metadata)
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        data_offset = (self.pos + alignment - 1) // alignment * alignment
        shard = self.path if any(m.key == "split.count" for m in metadata) else None
        tensors = self.place_tensors(infos, data_offset, alignment, shard)
        return GGUFFile(self.path, version, metadata, tensors, alignment, data_offset)

    def key_value(self, index: int) -> Metadatum:
        key = self.string(f"metadata key #{index}")
        value_type = self.value_type(f"type of {key!r}")
        if value_type == GGUFValueType.ARRAY:
            element_type = self.value_type(f"element type of {key!r}")
            if element_type == GGUFValueType.ARRAY:
                raise self.fail(f"{key!r} is an array of arrays")
            count = self.scalar("<Q", f"length of {key!r}")
            minimum = (
                8 if element_type == GGUFValueType.STRING else struct.calcsize(SCALAR_FORMATS[element_type])
            )
            if count * minimum > self.size - self.pos:
                raise self.fail(f"array {key!r} claims {count} elements, more than the file can hold")
            self.array_elements += count
            if self.array_elements > MAX_ARRAY_ELEMENTS:
                raise self.fail(
                    f"metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements ({key!r} has {count}), "
                    "far more than any model's vocabulary"
                )
            return Metadatum(key, self.array(key, element_type, count), value_type, element_type)
        return Metadatum(key, self.value(key, value_type), value_type)

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.scalar("<I", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} is {raw}, not a GGUF value type") from None

    def value(self, key: str, value_type: GGUFValueType) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string(f"value of {key!r}")
        return self.scalar(SCALAR_FORMATS[value_type], f"value of {key!r}")

    def array(self, key: str, element_type: GGUFValueType, count: int) -> list[Any]:
        if element_type == GGUFValueType.STRING:
            return self.string_array(key, count)
        fmt = SCALAR_FORMATS[element_type]
        raw = self.take(count * struct.calcsize(fmt), f"array {key!r}")
        return np.frombuffer(raw, dtype=np.dtype(fmt)).tolist()

    def string_array(self, key: str, count: int) -> list[str]:
        """`count` strings, checked as `string` checks one, in a loop tight enough for vocabularies."""
        view, size, pos = self.view, self.size, self.pos
        unpack_length = struct.Struct("<Q").unpack_from
        strings: list[str] = []
        for i in range(count):
            length = unpack_length(view, pos)[0] if pos + 8 <= size else -1
            if length < 0 or length > size - pos - 8:
                self.pos = pos
                raise self.fail(f"element {i} of {key!r} runs past the end of the file (offset {pos})")
            try:
                strings.append(view[pos + 8 : pos + 8 + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise self.fail(f"element {i} of {key!r} is not valid UTF-8") from None
            pos += 8 + length
        self.pos = pos
        return strings

    def alignment(self, metadata: list[Metadatum]) -> int:
        for item in metadata:
            if item.key == "general.alignment":
                value = item.value
                # llama.cpp's gguf.cpp requires a u32 here, as the spec does.
                if item.value_type != GGUFValueType.UINT32 or value <= 0 or value & (value - 1):
                    raise self.fail(f"general.alignment {value!r} is not a u32 power of two")
                return int(value)
        return GGUF_DEFAULT_ALIGNMENT

    def tensor_info(self, index: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string(f"name of tensor #{index}")
        n_dims = self.scalar("<I", f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(self.scalar("<Q", f"shape of {name!r}") for _ in range(n_dims))
        ggml_type = self.scalar("<I", f"type of {name!r}")
        offset = self.scalar("<Q", f"offset of {name!r}")
        return name, shape, ggml_type, offset

    def place_tensors(
        self,
        infos: list[tuple[str, tuple[int, ...], int, int]],
        data_offset: int,
        alignment: int,
        shard: Path | None,
    ) -> list[GGUFTensor]:
        tensors: list[GGUFTensor] = []
        seen: set[str] = set()
        for name, shape, ggml_type, offset in infos:
            if name in seen:
                raise self.fail(f"tensor {name!r} appears twice")
            seen.add(name)
            if ggml_type not in TYPE_SIZES:
                raise self.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
            block, type_size = TYPE_SIZES[ggml_type]
            if 0 in shape:
                # gguf.cpp allows empty tensors, but no model has one and every consumer would
                # divide by the zero (rows of length 0, 0 rows).
                raise self.fail(f"tensor {name!r} has an empty dimension in shape {list(shape)}")
            if shape[0] % block:
                raise self.fail(f"tensor {name!r} rows of {shape[0]} are not a multiple of its block {block}")
            n_elements = math.prod(shape)
            nbytes = n_elements // block * type_size
            start = data_offset + offset
            if offset % alignment:
                raise self.fail(f"tensor {name!r} offset {offset} is not aligned to {alignment}")
            if start + nbytes > self.size:
                raise self.fail(
                    f"tensor {name!r} data ({nbytes} bytes at {start}) runs past the end of the file"
                )
            tensors.append(GGUFTensor(name, shape, ggml_type, start, nbytes, shard))
        ordered = sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset)
        for before, after in zip(ordered, ordered[1:]):
            if before.offset + before.nbytes > after.offset:
                raise self.fail(f"tensors {before.name!r} and {after.name!r} overlap")
        return tensors
