"""A split model's shards joined back into the one file phiquant writes when it does not split.

llama-gguf-split --merge copies the first shard's keys with split.count set to 0 and keeps split.no and
split.tensors.count (tools/gguf-split/gguf-split.cpp, gguf_merge; docs/gguf_split.md §4), so its
output is not the unsplit file.  Here the header is the first shard's keys without the split.* keys and
every tensor's info in model order, and each tensor's bytes are copied from its shard as they are,
through one fixed-size buffer: the result equals, byte for byte, what `convert` or `quantize` writes
without --split-max-*.
"""

from __future__ import annotations

import contextlib
from io import BufferedReader
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT

from phiquant.errors import PhiquantError
from phiquant.gguf_io.reader import GGUFFile, GGUFTensor
from phiquant.gguf_io.split import SHARD_NAME, SPLIT_KEYS
from phiquant.gguf_io.writer import GGUFOutput, TensorInfo
from phiquant.model_source import Metadatum
from phiquant.progress import SILENT, Reporter

# The copy buffer: the whole of memory the merge needs for tensor data, whatever the model's size.
COPY_CHUNK_BYTES = 16 * 1024 * 1024


def unsplit_path(first_shard: Path) -> Path:
    """`NAME-00001-of-0000N.gguf` -> `NAME.gguf` beside it: the name the unsplit file would have."""
    match = SHARD_NAME.match(first_shard.name)
    return first_shard.with_name(f"{match['prefix'] if match else first_shard.stem}.gguf")


def unsplit_metadata(gguf: GGUFFile) -> list[Metadatum]:
    """The model's keys, in their order, without the keys that describe the split."""
    return [item for item in gguf.metadata if item.key not in SPLIT_KEYS]


def merged_output(gguf: GGUFFile, path: Path) -> GGUFOutput:
    """The unsplit file's output: header planned, nothing opened."""
    if gguf.alignment != GGUF_DEFAULT_ALIGNMENT:
        # phiquant's writer lays out data at llama.cpp's default alignment only.
        raise PhiquantError(
            f"general.alignment is {gguf.alignment}; phiquant merges shards aligned to "
            f"{GGUF_DEFAULT_ALIGNMENT} bytes (llama.cpp's default) only",
            path=gguf.path,
        )
    arch = gguf.get("general.architecture")
    tensors = [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes) for t in gguf.tensors]
    return GGUFOutput(path, arch if isinstance(arch, str) else None, unsplit_metadata(gguf), tensors)


def write_merged(gguf: GGUFFile, path: Path, reporter: Reporter = SILENT) -> None:
    """Write the unsplit file of the (joined) split model `gguf` to `path`, atomically."""
    output = merged_output(gguf, path)
    largest = max((t.nbytes for t in gguf.tensors), default=0)
    buffer = memoryview(bytearray(max(1, min(COPY_CHUNK_BYTES, largest))))
    reporter.start("merging", total=sum(t.nbytes for t in gguf.tensors), unit="B")
    try:
        # ExitStack closes the shards before `output` leaves its block and is renamed into place.
        with output, contextlib.ExitStack() as shards:
            opened: dict[Path, BufferedReader] = {}
            for tensor in gguf.tensors:
                shard = gguf.file_of(tensor)
                if shard not in opened:
                    opened[shard] = shards.enter_context(_open_shard(shard))
                _copy_tensor(opened[shard], shard, tensor, output, buffer, reporter)
    finally:
        reporter.finish()


def _open_shard(path: Path) -> BufferedReader:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's ExitStack
    except OSError as exc:
        raise PhiquantError(f"cannot read: {exc.strerror}", path=path) from exc


def _copy_tensor(
    file: BufferedReader,
    shard: Path,
    tensor: GGUFTensor,
    output: GGUFOutput,
    buffer: memoryview,
    reporter: Reporter,
) -> None:
    try:
        file.seek(tensor.offset)
        left = tensor.nbytes
        while left:
            count = file.readinto(buffer[: min(left, len(buffer))])
            if not count:
                raise PhiquantError(
                    f"ends inside tensor {tensor.name!r}: the shard changed while it was read", path=shard
                )
            output.write(np.frombuffer(buffer[:count], dtype=np.uint8))
            left -= count
            reporter.advance(count)
    except OSError as exc:
        raise PhiquantError(f"cannot read: {exc.strerror}", path=shard) from exc
