"""Importance matrices: llama.cpp's GGUF format (read and write) and the legacy .dat format (read).

GGUF (tools/imatrix/imatrix.cpp, common/imatrix-loader.cpp): per weight `<name>.in_sum2` (F32, ne0 x n_mat:
per column, the sum over tokens of the squared input activation) and `<name>.counts` (F32, n_mat: tokens
seen, per expert), plus `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`.

Legacy .dat (little-endian): int32 n_entries; per entry int32 name length, name, int32 ncall, int32 nval,
nval float32 values already scaled as (sum / count) * ncall; then optionally int32 chunk count and an
int32-length-prefixed dataset name.

The weights handed to the quantizer are normalised as llama-quantize's load_imatrix does it, in float32:
GGUF sums / count per expert (1.0 for an expert that saw no tokens), legacy values / ncall.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFOutput, TensorInfo, read_gguf
from phiquant.gguf_io.reader import GGUF_MAGIC
from phiquant.model_source import Metadatum
from phiquant.quant.plan import TensorDesc
from phiquant.quant.types import GGMLType

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
# llama.cpp ignores a token_embd imatrix of the wrong length (real imatrices never cover the lookup).
_LENGTH_MISMATCH_TOLERATED = ("token_embd.weight", "per_layer_token_embd.weight")


@dataclass(frozen=True)
class ImatrixEntry:
    in_sum2: np.ndarray  # float32, ne0 * n_matrices (legacy: the stored, count-scaled values)
    counts: np.ndarray  # int64, one per matrix (legacy: [ncall])

    def weights(self, is_legacy: bool) -> np.ndarray:
        """The per-column weights the quantizer receives."""
        sums = self.in_sum2.astype(np.float32, copy=False)
        if is_legacy:
            ncall = int(self.counts[0]) if self.counts.size else 0
            return sums / np.float32(ncall) if ncall > 0 else sums.copy()
        per_matrix = sums.reshape(self.counts.size, -1)
        out = np.ones_like(per_matrix)
        for matrix, count in enumerate(self.counts):
            if count > 0:
                out[matrix] = per_matrix[matrix] / np.float32(count)
        return out.reshape(-1)


@dataclass(frozen=True)
class ImportanceMatrix:
    entries: Mapping[str, ImatrixEntry]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False
    path: Path | None = None

    @property
    def entries_count(self) -> int:
        return len(self.entries)

    def weights(self) -> dict[str, np.ndarray]:
        return {name: entry.weights(self.is_legacy) for name, entry in self.entries.items()}


def read_imatrix(path: str | os.PathLike[str]) -> ImportanceMatrix:
    """Read a GGUF or legacy .dat importance matrix (told apart by the GGUF magic, as llama.cpp does)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise PhiquantError(f"cannot read imatrix file: {error.strerror}", path=path) from None
    return _read_gguf_imatrix(path) if magic == GGUF_MAGIC else _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> ImportanceMatrix:
    layout = read_gguf(path)
    missing = [key for key in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if layout.get(key) is None]
    if missing:
        # llama-quantize refuses these too ("missing imatrix metadata").
        raise PhiquantError(f"not an imatrix file: missing {', '.join(missing)}", path=path)
    datasets = layout.get(KEY_DATASETS)
    if not isinstance(datasets, list) or not all(isinstance(item, str) for item in datasets):
        raise PhiquantError(f"{KEY_DATASETS} must be an array of strings", path=path)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for info in layout.tensors:
        for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
            if info.name.endswith(suffix) and len(info.name) > len(suffix):
                if info.ggml_type != GGMLType.F32:
                    raise PhiquantError(
                        f"imatrix tensor {info.name} is {GGMLType(info.ggml_type).name}; it must be F32",
                        path=path,
                    )
                values = np.array(layout.raw_bytes(info)).view(np.float32)
                pairs.setdefault(info.name[: -len(suffix)], {})[suffix] = values
    if not pairs:
        raise PhiquantError("the imatrix file holds no entries", path=path)
    entries = {name: _gguf_entry(name, pair, path) for name, pair in sorted(pairs.items())}
    return ImportanceMatrix(
        entries,
        tuple(datasets),
        int(layout.get(KEY_CHUNK_COUNT)),
        int(layout.get(KEY_CHUNK_SIZE)),
        is_legacy=False,
        path=path,
    )


def _gguf_entry(name: str, pair: dict[str, np.ndarray], path: Path) -> ImatrixEntry:
    if SUMS_SUFFIX not in pair or COUNTS_SUFFIX not in pair:
        raise PhiquantError(
            f"imatrix entry {name} has {'no counts' if SUMS_SUFFIX in pair else 'no sums'}", path=path
        )
    sums, counts = pair[SUMS_SUFFIX], pair[COUNTS_SUFFIX]
    if counts.size == 0 or sums.size % counts.size:
        raise PhiquantError(
            f"imatrix entry {name}: {sums.size} sums cannot be split over {counts.size} expert counts",
            path=path,
        )
    if not np.isfinite(counts).all():
        raise PhiquantError(f"imatrix entry {name} has non-finite counts", path=path)
    # lround, as common/imatrix-loader.cpp: halves away from zero.
    rounded = (np.sign(counts) * np.floor(np.abs(counts.astype(np.float64)) + 0.5)).astype(np.int64)
    return ImatrixEntry(sums, rounded)


class _LegacyReader:
    def __init__(self, raw: bytes, path: Path) -> None:
        self.raw, self.path, self.position = raw, path, 0

    def take(self, n_bytes: int, what: str) -> bytes:
        if n_bytes < 0 or self.position + n_bytes > len(self.raw):
            raise PhiquantError(
                f"truncated or corrupt imatrix file: {what} at byte {self.position}", path=self.path
            )
        chunk = self.raw[self.position : self.position + n_bytes]
        self.position += n_bytes
        return chunk

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    def c_string(self, n_bytes: int, what: str) -> str:
        raw = self.take(n_bytes, what).split(b"\0", 1)[0]  # the C++ reader stops at a NUL
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PhiquantError(f"corrupt imatrix file: {what} is not UTF-8", path=self.path) from None


def _read_legacy_imatrix(path: Path) -> ImportanceMatrix:
    reader = _LegacyReader(path.read_bytes(), path)
    n_entries = reader.int32("entry count") if len(reader.raw) >= 4 else 0
    if n_entries < 1:
        raise PhiquantError("not an imatrix file (neither GGUF nor a legacy .dat with entries)", path=path)
    entries: dict[str, ImatrixEntry] = {}
    for index in range(n_entries):
        name_length = reader.int32(f"name length of entry {index + 1}")
        name = reader.c_string(name_length, f"name of entry {index + 1}")
        ncall = reader.int32(f"call count of {name}")
        nval = reader.int32(f"value count of {name}")
        if nval < 1:
            raise PhiquantError(f"corrupt imatrix file: entry {name} has {nval} values", path=path)
        values = np.frombuffer(reader.take(4 * nval, f"values of {name}"), dtype="<f4").astype(np.float32)
        entries[name] = ImatrixEntry(values, np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, tuple[str, ...]()
    if reader.position < len(reader.raw):
        chunk_count = reader.int32("chunk count")
        if reader.position < len(reader.raw):
            length = reader.int32("dataset name length")
            if length > 0:
                datasets = (reader.c_string(length, "dataset name"),)
    return ImportanceMatrix(entries, datasets, chunk_count, 0, is_legacy=True, path=path)


def write_imatrix(path: str | os.PathLike[str], imatrix: ImportanceMatrix) -> None:
    """Write the GGUF imatrix format as llama-imatrix does: general.type "imatrix", the three imatrix.*
    keys, and per entry (in name order) in_sum2 of shape {ne0, n_mat} and counts of shape {1, n_mat}."""
    if not imatrix.datasets:
        raise PhiquantError("an imatrix needs the name of the text it was computed on", path=path)
    metadata = [
        Metadatum("general.type", "imatrix", GGUFValueType.STRING),
        Metadatum(KEY_DATASETS, list(imatrix.datasets), GGUFValueType.ARRAY, GGUFValueType.STRING),
        Metadatum(KEY_CHUNK_COUNT, imatrix.chunk_count, GGUFValueType.UINT32),
        Metadatum(KEY_CHUNK_SIZE, imatrix.chunk_size, GGUFValueType.UINT32),
    ]
    infos: list[TensorInfo] = []
    arrays: list[np.ndarray] = []
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        n_matrices = entry.counts.size
        sums = np.ascontiguousarray(entry.in_sum2, dtype="<f4")
        if n_matrices == 0 or sums.size % n_matrices:
            raise PhiquantError(
                f"imatrix entry {name}: {sums.size} sums cannot be split over {n_matrices} expert counts"
            )
        counts = np.ascontiguousarray(entry.counts, dtype="<f4")
        infos.append(
            TensorInfo(name + SUMS_SUFFIX, (sums.size // n_matrices, n_matrices), GGMLType.F32, sums.nbytes)
        )
        infos.append(TensorInfo(name + COUNTS_SUFFIX, (1, n_matrices), GGMLType.F32, counts.nbytes))
        arrays += [sums, counts]
    with GGUFOutput(Path(path), None, metadata, infos) as output:
        for array in arrays:
            output.write(array)


def imatrix_weights_for_model(
    imatrix: ImportanceMatrix, tensors: Iterable[TensorDesc]
) -> dict[str, np.ndarray]:
    """The weights to quantize `tensors` with, after checking that the imatrix belongs to this model.

    Refuses entries for tensors the model lacks, entries of the wrong length (ne[0] x experts) and
    non-finite values, naming the first offending entry; a token_embd entry of the wrong length is
    dropped, as llama.cpp drops it.
    """
    shapes = {tensor.name: tensor.shape for tensor in tensors}
    where = imatrix.path
    weights = {}
    for name, values in imatrix.weights().items():
        if name not in shapes:
            raise PhiquantError(
                f"imatrix entry {name} matches no tensor in the model (imatrix for another model?)",
                path=where,
            )
        shape = shapes[name]
        expected = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if not np.isfinite(values).all():
            raise PhiquantError(f"imatrix entry {name} contains NaN or infinite values", path=where)
        if values.size != expected:
            if name in _LENGTH_MISMATCH_TOLERATED:
                continue
            raise PhiquantError(
                f"imatrix entry {name} has {values.size} values but the tensor needs "
                f"{expected} (imatrix for another model?)",
                path=where,
            )
        weights[name] = values
    return weights
