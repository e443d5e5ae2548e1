"""Writing GGUF files through the `gguf` package, atomically and one tensor at a time.

The header (key/values and tensor infos) is serialised by gguf's GGUFWriter; tensor data is then
streamed into the file as each tensor is produced, so no function holds the whole model.  Output
goes to a temporary file beside the destination and is renamed into place only when complete:
an error, Ctrl-C or SIGTERM leaves no partial file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFEndian, GGUFValueType, GGUFWriter
from gguf.gguf_writer import WriterState

from phiquant import temporary_files
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum

TEMP_SUFFIX = temporary_files.PARTIAL_SUFFIX


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the GGUF header describes it: ggml `ne` order shape, ggml type id, byte size."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int


def padded(nbytes: int, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> int:
    return (nbytes + alignment - 1) // alignment * alignment


class _HeaderWriter(GGUFWriter):
    """gguf's writer, able to write an empty array: GGUF allows them and llama.cpp copies them into
    quantized files, but gguf-py refuses to pack one, so requantizing such a file would fail.

    Arrays of numbers and of strings (a vocabulary's tokens, scores and types: tens of thousands of
    items) are packed in one call, with the bytes gguf-py's item-by-item packing gives (little-endian
    '<' formats have no padding, so packing n items at once is their concatenation); every file of a
    ladder and every size a budget plan predicts serialises the header again."""

    def _pack_val(
        self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None
    ) -> bytes:
        if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            prefix = self._pack("I", vtype) if add_vtype else b""
            return prefix + self._pack("I", sub_type) + self._pack("Q", 0)
        little = self.endianess == GGUFEndian.LITTLE
        if vtype == GGUFValueType.ARRAY and sub_type is not None and little and isinstance(val, Sequence):
            items = _packed_items(val, sub_type)
            if items is not None:
                prefix = self._pack("I", vtype) if add_vtype else b""
                return prefix + self._pack("I", sub_type) + self._pack("Q", len(val)) + items
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _packed_items(values: Sequence[Any], item_type: GGUFValueType) -> bytes | None:
    """The items of a little-endian GGUF array, packed at once; None for item types left to gguf-py."""
    fmt = GGUFWriter._simple_value_packing.get(item_type)
    if fmt is not None and item_type != GGUFValueType.BOOL:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    if item_type == GGUFValueType.STRING:
        encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        return b"".join(struct.pack("<Q", len(e)) + e for e in encoded)
    return None


def serialise_header(arch: str | None, metadata: Sequence[Metadatum], tensors: Sequence[TensorInfo]) -> bytes:
    """The bytes before the data section: magic, counts, key/values, tensor infos and padding.

    `general.architecture` comes first (GGUFWriter adds it), then `metadata` in order.  Files that
    are not models (importance matrices) pass arch=None and get no architecture key.
    """
    writer = _HeaderWriter(None, arch or "")
    if arch is None:
        writer.kv_data[0].pop("general.architecture", None)
    for item in metadata:
        if item.key == "general.architecture":
            continue
        writer.add_key_value(item.key, item.value, item.value_type, item.sub_type)
    for info in tensors:
        # gguf expects numpy (reversed) order; raw_dtype may be a type gguf 0.19 has no enum for
        # (Q2_0), which is fine because it is only packed as an integer.
        writer.add_tensor_info(
            info.name,
            tuple(reversed(info.shape)),
            np.dtype(np.float32),
            info.nbytes,
            raw_dtype=info.ggml_type,
        )
    buffer = io.BytesIO()
    writer.fout = [buffer]  # type: ignore[list-item]
    writer.state = WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    header = buffer.getvalue()
    return header + bytes(padded(len(header)) - len(header))


def predicted_file_size(
    arch: str | None, metadata: Sequence[Metadatum], tensors: Sequence[TensorInfo]
) -> int:
    return len(serialise_header(arch, metadata, tensors)) + sum(padded(t.nbytes) for t in tensors)


class GGUFOutput:
    """A GGUF file being written: header first, then each tensor's bytes in header order.

    Use as a context manager (or through `open_outputs` for several); the file appears at `path`
    only if the block completes, and its temporary file is registered for removal before it exists
    (phiquant.temporary_files), so no moment of an interrupt leaves it behind.
    """

    def __init__(
        self, path: Path, arch: str | None, metadata: Sequence[Metadatum], tensors: Sequence[TensorInfo]
    ):
        self.path = Path(path)
        self.arch = arch
        self.metadata = list(metadata)
        self.tensors = list(tensors)
        self.temp_path = temporary_files.partial_name(self.path)
        self._partial: temporary_files.PartialFile | None = None
        self._next_tensor = 0
        self._written_in_tensor = 0

    @property
    def predicted_size(self) -> int:
        return predicted_file_size(self.arch, self.metadata, self.tensors)

    def open(self) -> None:
        """Create the temporary file and write the header (after a free-space check)."""
        header = serialise_header(self.arch, self.metadata, self.tensors)
        directory = self.path.parent
        if not directory.is_dir():
            raise PhiquantError("output directory does not exist (or is not a directory)", path=directory)
        try:
            self._partial = temporary_files.create(self.path)
        except OSError as exc:
            raise _write_error(exc, self.path) from exc
        try:
            check_free_space(self.path, len(header) + sum(padded(t.nbytes) for t in self.tensors))
            self._partial.file.write(header)
        except OSError as exc:
            self.discard()
            raise _write_error(exc, self.path) from exc
        except BaseException:
            self.discard()
            raise

    def write(self, chunk: np.ndarray | bytes) -> None:
        """Append bytes of the current tensor; the tensor is finished when its byte count is reached."""
        assert self._partial is not None, "GGUFOutput used before open()"
        if self._next_tensor >= len(self.tensors):
            raise ValueError(f"{self.path}: more tensor data than the header declares")
        info = self.tensors[self._next_tensor]
        data = memoryview(np.ascontiguousarray(chunk)).cast("B") if isinstance(chunk, np.ndarray) else chunk
        if self._written_in_tensor + len(data) > info.nbytes:
            raise ValueError(f"{info.name}: more than its {info.nbytes} bytes written")
        try:
            self._partial.file.write(data)
            self._written_in_tensor += len(data)
            if self._written_in_tensor == info.nbytes:
                self._partial.file.write(bytes(padded(info.nbytes) - info.nbytes))
                self._next_tensor += 1
                self._written_in_tensor = 0
        except OSError as exc:
            raise _write_error(exc, self.path) from exc

    def check_complete(self) -> None:
        if self._next_tensor != len(self.tensors):
            missing = self.tensors[self._next_tensor].name
            raise ValueError(f"{self.path}: tensor data ended before {missing}")

    def discard(self) -> None:
        if self._partial is not None:
            temporary_files.discard(self._partial)
            self._partial = None
        else:
            temporary_files.abandon(self.temp_path)

    def __enter__(self) -> GGUFOutput:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is not None:
            self.discard()
            return
        commit_outputs([self])


def commit_outputs(outputs: Sequence[GGUFOutput]) -> None:
    """Rename every complete output into place together, or remove them all."""
    try:
        for output in outputs:
            output.check_complete()
        partials = [output._partial for output in outputs]
        assert all(partial is not None for partial in partials), "commit_outputs before open()"
        temporary_files.commit([partial for partial in partials if partial is not None])
    except OSError as exc:
        for output in outputs:
            output.discard()
        raise _write_error(exc, outputs[0].path) from exc
    except BaseException:
        for output in outputs:
            output.discard()
        raise
    for output in outputs:
        output._partial = None


def check_free_space(path: Path, needed: int) -> None:
    """Refuse to start a write that cannot fit, instead of failing near the end."""
    directory = path.parent
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise PhiquantError(
            f"not enough disk space: writing needs {format_bytes(needed)}, {format_bytes(free)} free",
            path=directory,
        )


def _write_error(exc: OSError, path: Path) -> PhiquantError:
    if exc.errno == errno.ENOSPC:
        return PhiquantError("disk full while writing; nothing was left behind", path=path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PhiquantError("cannot write here: permission denied", path=path)
    return PhiquantError(f"cannot write: {exc.strerror}", path=path)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@contextlib.contextmanager
def open_outputs(outputs: Sequence[GGUFOutput]) -> Iterator[Sequence[GGUFOutput]]:
    """Open several outputs (a quantization ladder) so they all complete or all vanish."""
    if len(outputs) > 1:
        check_ladder_free_space(outputs)
    try:
        for output in outputs:
            output.open()
        yield outputs
    except BaseException:
        for output in outputs:
            output.discard()
        raise
    commit_outputs(outputs)


def check_ladder_free_space(outputs: Sequence[GGUFOutput]) -> None:
    """The files of a ladder grow together, so each one's own check at open time would pass while
    their sum does not fit: check the sum per file system before any is opened."""
    by_device: dict[int, list[GGUFOutput]] = {}
    for output in outputs:
        try:
            device = os.stat(output.path.parent).st_dev
        except OSError:
            continue  # a missing directory: GGUFOutput.__enter__ says so
        by_device.setdefault(device, []).append(output)
    for group in by_device.values():
        if len(group) > 1:
            check_free_space(group[0].path, sum(output.predicted_size for output in group))
