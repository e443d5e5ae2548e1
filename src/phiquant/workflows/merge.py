"""`merge`: a split model's shards to the one GGUF file phiquant writes unsplit (for Ollama, which reads
one file, and for tools that do not open shards).

The shard set is read and checked as every reader checks it (gguf_io.split.join_shards); the output is
refused before anything is written when it exists (unless `overwrite`) or is one of the shards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.gguf_io.merge import unsplit_path, write_merged
from phiquant.gguf_io.split import split_count
from phiquant.progress import SILENT, Reporter


@dataclass
class MergeResult:
    path: Path
    shards: list[Path]  # the files merged, first first
    n_tensors: int
    file_size: int
    seconds: float


def merge(
    first_shard: str | Path,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    reporter: Reporter = SILENT,
) -> MergeResult:
    """Join a split model's shards (given its first, `NAME-00001-of-0000N.gguf`) into one GGUF file,
    byte for byte the file `convert` or `quantize` writes without splitting: the first shard's keys
    without split.*, every tensor in order, its bytes copied as they are (streamed through a small
    buffer).  The set is checked as every reader checks it.  `output` defaults to `NAME.gguf` beside
    the shards (inside `output` when it is a folder); an existing file is replaced only with
    `overwrite`.  For Ollama, which reads one file; llama.cpp loads the shards as they are."""
    started = time.perf_counter()
    first_shard = Path(first_shard)
    gguf = read_gguf(first_shard)
    count = split_count(gguf)
    if count is None or count < 1:
        already = "" if count is None else " (split.count 0: llama-gguf-split --merge made it)"
        raise PhiquantError(
            f"is not a split model{already}: nothing to merge; llama.cpp and Ollama read it as it is",
            path=first_shard,
        )
    path = merged_path(first_shard, output)
    check_output(path, gguf.shards, overwrite=overwrite)
    write_merged(gguf, path, reporter)
    return MergeResult(
        path=path,
        shards=list(gguf.shards),
        n_tensors=len(gguf.tensors),
        file_size=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def merged_path(first_shard: Path, output: str | Path | None) -> Path:
    """`output`; inside it when it is a folder; by default the shards' name without -00001-of-0000N."""
    if output is None:
        return unsplit_path(first_shard)
    path = Path(output)
    return path / unsplit_path(first_shard).name if path.is_dir() else path


def check_output(path: Path, shards: list[Path], *, overwrite: bool) -> None:
    if any(path.resolve() == shard.resolve() for shard in shards):
        raise PhiquantError("is one of the shards being merged; give another output file", path=path)
    if path.exists() and not overwrite:
        raise PhiquantError("already exists; give --force to replace it", path=path)
