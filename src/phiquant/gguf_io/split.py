"""Split GGUF models: one model in several files, as llama.cpp writes and loads them.

llama-gguf-split (tools/gguf-split/gguf-split.cpp) and convert_hf_to_gguf.py name the shards
`<prefix>-00001-of-0000N.gguf`; the first holds every key/value of the model, each shard holds
`split.no` (u16, from 0), `split.count` (u16) and `split.tensors.count` (i32, the model's total) and a
run of the tensors in model order.  llama.cpp is given the first shard and opens the others by name.

Writing: a shard is started before the tensor whose padded bytes would take the current shard past
`--split-max-size` (tensor data only, as gguf-split counts it), or every `--split-max-tensors`
tensors.  The split keys go after the model's keys in gguf-split's order (it sets split.count twice,
and gguf's setter moves a re-set key to the end).  A model that fits in one shard is written as one
plain file, as convert_hf_to_gguf.py does.

Reading: the first shard names the rest; every one must be present, agree on the count and the
model's tensor total, carry its own index, and together hold each tensor once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io.writer import GGUFOutput, TensorInfo, padded
from phiquant.model_source import Metadatum

if TYPE_CHECKING:
    from phiquant.gguf_io.reader import GGUFFile

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT = "split.no", "split.count", "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)
SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 99999  # five digits in the name; split.count is a u16
_SIZE_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}


@dataclass(frozen=True)
class SplitLimits:
    """At most `max_bytes` of tensor data or `max_tensors` tensors per shard (one of the two)."""

    max_bytes: int | None = None
    max_tensors: int | None = None

    def __post_init__(self) -> None:
        if (self.max_bytes is None) == (self.max_tensors is None):
            raise PhiquantError("give one of --split-max-size and --split-max-tensors, not both")
        if self.max_tensors is not None and self.max_tensors < 1:
            raise PhiquantError(f"--split-max-tensors must be at least 1, not {self.max_tensors}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise PhiquantError(f"--split-max-size must be at least 1 byte, not {self.max_bytes}")


def parse_split_size(text: str) -> int:
    """`500M`, `2G`, `48G`, `100K` or a byte count: decimal units, as llama.cpp's tools read them."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text.upper())
    if match is None:
        raise PhiquantError(f"--split-max-size {text!r} is not a size like 500M or 48G")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def shard_path(path: Path, index: int, count: int) -> Path:
    """llama_split_path: `<path without .gguf>-%05d-of-%05d.gguf`, index from 0."""
    prefix = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return path.with_name(f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf")


def plan_shards(tensors: Sequence[TensorInfo], limits: SplitLimits) -> list[list[TensorInfo]]:
    """The tensors of each shard, as gguf-split's split_strategy groups them."""
    shards: list[list[TensorInfo]] = [[]]
    shard_bytes = 0
    for index, tensor in enumerate(tensors):
        size = padded(tensor.nbytes, GGUF_DEFAULT_ALIGNMENT)
        if limits.max_bytes is not None:
            start_new = shard_bytes + size > limits.max_bytes
        else:
            assert limits.max_tensors is not None
            start_new = index > 0 and index % limits.max_tensors == 0
        if start_new:
            if not shards[-1]:
                raise PhiquantError(
                    f"--split-max-size {limits.max_bytes} is smaller than the first tensor, {tensor.name} "
                    f"({size} bytes): no shard could hold it"
                )
            shards.append([])
            shard_bytes = 0
        shards[-1].append(tensor)
        shard_bytes += size
    if len(shards) > MAX_SHARDS:
        raise PhiquantError(f"the limit makes {len(shards)} shards; llama.cpp reads at most {MAX_SHARDS}")
    return shards


def split_metadata(index: int, count: int, n_tensors: int) -> list[Metadatum]:
    return [
        Metadatum(SPLIT_NO, index, GGUFValueType.UINT16),
        Metadatum(SPLIT_TENSORS_COUNT, n_tensors, GGUFValueType.INT32),
        Metadatum(SPLIT_COUNT, count, GGUFValueType.UINT16),
    ]


class ShardedOutput:
    """A model written as several GGUFOutputs (its shards), fed as one: tensor bytes in model order.

    Enter the `parts` (e.g. with gguf_io.open_outputs, beside other outputs of a ladder) and call
    `write` as on a GGUFOutput; each tensor's bytes go to the shard that holds it."""

    def __init__(
        self,
        path: Path,
        arch: str | None,
        metadata: Sequence[Metadatum],
        tensors: Sequence[TensorInfo],
        limits: SplitLimits,
    ):
        groups = plan_shards(tensors, limits)
        count = len(groups)
        self.parts = [
            GGUFOutput(
                shard_path(path, i, count),
                arch if i == 0 else None,
                (list(metadata) if i == 0 else []) + split_metadata(i, count, len(tensors)),
                group,
            )
            for i, group in enumerate(groups)
        ]
        self.path = self.parts[0].path  # what llama.cpp is given
        self._owner = [part for part, group in zip(self.parts, groups, strict=True) for _ in group]
        self._sizes = [t.nbytes for group in groups for t in group]
        self._tensor = 0
        self._written = 0

    @property
    def paths(self) -> list[Path]:
        return [part.path for part in self.parts]

    @property
    def predicted_size(self) -> int:
        return sum(part.predicted_size for part in self.parts)

    def write(self, chunk: np.ndarray | bytes) -> None:
        """Bytes of the current tensor (a chunk never spans two tensors)."""
        if self._tensor >= len(self._sizes):
            raise ValueError(f"{self.path}: more tensor data than the shards declare")
        self._owner[self._tensor].write(chunk)
        self._written += chunk.nbytes if isinstance(chunk, np.ndarray) else len(chunk)
        if self._written == self._sizes[self._tensor]:
            self._tensor += 1
            self._written = 0


def model_output(
    path: Path,
    arch: str | None,
    metadata: Sequence[Metadatum],
    tensors: Sequence[TensorInfo],
    limits: SplitLimits | None,
) -> GGUFOutput | ShardedOutput:
    """One file, or its shards when `limits` need more than one."""
    if limits is not None and len(plan_shards(tensors, limits)) > 1:
        return ShardedOutput(path, arch, metadata, tensors, limits)
    return GGUFOutput(path, arch, metadata, tensors)


def output_parts(output: GGUFOutput | ShardedOutput) -> list[GGUFOutput]:
    return output.parts if isinstance(output, ShardedOutput) else [output]


def output_paths(output: GGUFOutput | ShardedOutput) -> list[Path]:
    return [part.path for part in output_parts(output)]


# Reading ----------------------------------------------------------------------------------------


def split_count(first: GGUFFile) -> int | None:
    """The number of shards a file says its model has; None when it is not a shard."""
    count = first.get(SPLIT_COUNT)
    return None if count is None else int(count)


def join_shards(first: GGUFFile, read_one: Callable[[Path], GGUFFile]) -> GGUFFile:
    """The whole model of which `first` is shard 1: its metadata, every shard's tensors."""
    count = _checked_count(first)
    index = _checked_index(first, first.path, count, expected=0)
    if index != 0:
        raise PhiquantError(
            f"is shard {index + 1} of {count}; give the first shard, "
            f"{_first_name(first.path, index, count)} (llama.cpp opens the others from it)",
            path=first.path,
        )
    match = SHARD_NAME.match(first.path.name)
    if count > 1 and (match is None or int(match["no"]) != 1 or int(match["count"]) != count):
        raise PhiquantError(
            f"is the first of {count} shards but is not named <model>-00001-of-{count:05d}.gguf, so llama.cpp "
            "cannot find the others",
            path=first.path,
        )
    total = first.get(SPLIT_TENSORS_COUNT)
    shards = [first]
    for i in range(1, count):
        path = shard_path(
            Path(first.path.parent, match["prefix"] + ".gguf") if match else first.path, i, count
        )
        if not path.is_file():
            raise PhiquantError(f"shard {i + 1} of {count} is missing: {path.name}", path=first.path)
        shard = read_one(path)
        if shard.get(SPLIT_COUNT) is None:
            raise PhiquantError(
                f"is not a shard (no {SPLIT_COUNT}), though named as shard {i + 1}", path=path
            )
        if _checked_count(shard) != count:
            raise PhiquantError(
                f"says split.count = {shard.get(SPLIT_COUNT)}, but {first.path.name} says {count}: "
                "shards of different splits",
                path=path,
            )
        _checked_index(shard, path, count, expected=i)
        if shard.get(SPLIT_TENSORS_COUNT) != total:
            raise PhiquantError(
                f"belongs to a model of {shard.get(SPLIT_TENSORS_COUNT)} tensors, {first.path.name} to one "
                f"of {total}: shards of two different models",
                path=path,
            )
        shards.append(shard)
    tensors = [tensor for shard in shards for tensor in shard.tensors]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise PhiquantError(
            f"tensor {duplicate!r} is in two shards: shards of two different models", path=first.path
        )
    if total is not None and len(tensors) != total:
        raise PhiquantError(
            f"the {count} shards hold {len(tensors)} tensors, split.tensors.count says {total}",
            path=first.path,
        )
    return dataclasses.replace(first, tensors=tensors, shards=[shard.path for shard in shards])


def _checked_count(gguf: GGUFFile) -> int:
    count = gguf.get(SPLIT_COUNT)
    if not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise PhiquantError(f"split.count {count!r} is not a shard count", path=gguf.path)
    return count


def _checked_index(gguf: GGUFFile, path: Path, count: int, *, expected: int) -> int:
    index = gguf.get(SPLIT_NO)
    if not isinstance(index, int) or not 0 <= index < count:
        raise PhiquantError(f"split.no {index!r} is not a shard of {count}", path=path)
    if expected and index != expected:
        raise PhiquantError(
            f"holds split.no = {index} (shard {index + 1}) but is named as shard {expected + 1}: "
            "shards renamed or of different splits",
            path=path,
        )
    return int(index)


def _first_name(path: Path, index: int, count: int) -> str:
    match = SHARD_NAME.match(path.name)
    prefix = match["prefix"] if match else path.stem
    return f"{prefix}-00001-of-{count:05d}.gguf"


def ordered_shard_sets(paths: Sequence[Path]) -> list[Path]:
    """Command-line files with every listed shard set reduced to its first shard: `m-00001-of-00003.gguf
    m-00002-of-00003.gguf m-00003-of-00003.gguf` is one model.  A set must be listed in order."""
    result: list[Path] = []
    pending: tuple[str, int, int] | None = None  # (prefix, next number expected, count)
    for path in paths:
        match = SHARD_NAME.match(str(path))
        if match and pending and match["prefix"] == pending[0] and int(match["count"]) == pending[2]:
            if int(match["no"]) != pending[1]:
                raise PhiquantError(
                    f"shard given out of order: expected shard {pending[1]} of {pending[2]} here", path=path
                )
            pending = (pending[0], pending[1] + 1, pending[2]) if pending[1] < pending[2] else None
            continue
        pending = None
        if match and int(match["no"]) == 1 and int(match["count"]) > 1:
            pending = (match["prefix"], 2, int(match["count"]))
        result.append(path)
    return result


def reproducing_option(gguf: GGUFFile) -> str:
    """The phiquant option that splits this model into these same shards: --split-max-tensors when
    every shard but the last holds the same count, else --split-max-size of the largest shard's tensor
    data (greedy packing under that limit stops where the original limit did)."""
    groups = [[t for t in gguf.tensors if gguf.file_of(t) == shard] for shard in gguf.shards]
    first = len(groups[0])
    if all(len(group) == first for group in groups[:-1]) and len(groups[-1]) <= first:
        return f"--split-max-tensors {first}"
    largest = max(sum(padded(t.nbytes) for t in group) for group in groups)
    return f"--split-max-size {largest}"
