"""An independent maker of split files for the tests: llama-gguf-split's rules (tools/gguf-split/gguf-split.cpp,
split_strategy) applied to an unsplit file read with gguf-py's GGUFReader and written with gguf-py's
GGUFWriter, so neither phiquant's reader nor its writer takes part.

The rules: tensors stay in file order; a new shard starts before the tensor whose padded size would take
the shard's tensor data over the byte limit, or at every multiple of the tensor limit; the first shard
has every key of the input, every shard then gets split.no, split.tensors.count and split.count in that
order (gguf_set_val_* removes a key and appends it, and split.count is set twice).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGUFValueType


def _padded(n: int) -> int:
    return (n + gguf.GGUF_DEFAULT_ALIGNMENT - 1) // gguf.GGUF_DEFAULT_ALIGNMENT * gguf.GGUF_DEFAULT_ALIGNMENT


def shard_groups(
    tensors: list[gguf.ReaderTensor], max_bytes: int | None, max_tensors: int | None
) -> list[list[gguf.ReaderTensor]]:
    groups: list[list[gguf.ReaderTensor]] = [[]]
    size = 0
    for i, tensor in enumerate(tensors):
        n = _padded(int(tensor.n_bytes))
        new = (size + n > max_bytes) if max_bytes is not None else (i > 0 and i % max_tensors == 0)  # type: ignore[operator]
        if new:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += n
    return groups


def split_with_gguf_py(
    unsplit: Path,
    prefix: Path,
    *,
    max_bytes: int | None = None,
    max_tensors: int | None = None,
    recorded_count: int | None = None,
) -> list[Path]:
    """`recorded_count` writes another split.count than the shard count (llama-gguf-split --merge
    leaves 0 in its merged file)."""
    reader = gguf.GGUFReader(unsplit)
    groups = shard_groups(list(reader.tensors), max_bytes, max_tensors)
    paths = []
    for index, group in enumerate(groups):
        path = Path(f"{prefix}-{index + 1:05d}-of-{len(groups):05d}.gguf")
        writer = gguf.GGUFWriter(path, "")
        writer.kv_data[0].clear()  # GGUFWriter adds general.architecture itself; copy the input's instead
        if index == 0:
            for field in reader.fields.values():
                if field.name.startswith("GGUF."):
                    continue
                kind = GGUFValueType(field.types[0])
                if kind == GGUFValueType.ARRAY:
                    writer.add_key_value(field.name, field.contents(), kind, GGUFValueType(field.types[-1]))
                else:
                    writer.add_key_value(field.name, field.contents(), kind)
        writer.add_key_value("split.no", index, GGUFValueType.UINT16)
        writer.add_key_value("split.tensors.count", len(reader.tensors), GGUFValueType.INT32)
        count = len(groups) if recorded_count is None else recorded_count
        writer.add_key_value("split.count", count, GGUFValueType.UINT16)
        for tensor in group:
            data = np.asarray(tensor.data).reshape(-1).view(np.uint8)
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            writer.add_tensor_info(
                tensor.name, shape, np.dtype(np.float32), len(data), raw_dtype=tensor.tensor_type
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in group:
            writer.write_tensor_data(np.asarray(tensor.data).reshape(-1).view(np.uint8))
        writer.close()
        paths.append(path)
    return paths
