"""What the runtime commands accept as MODEL: a GGUF file, or a Hugging Face directory converted once.

A Hugging Face checkpoint is converted (`api.convert`, outtype auto: the checkpoint's own precision)
into phiquant's cache and reused while the checkpoint is unchanged.  The cache key hashes each file's
name, size and modification time, so an edited or re-downloaded checkpoint is converted again and the
stale copy removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from phiquant import __version__, temporary_files
from phiquant.errors import PhiquantError
from phiquant.hub import resolve_source
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.loader import cache_dir

GGUF_MAGIC = b"GGUF"
SOURCE_RECORD = "source.json"


@dataclass(frozen=True)
class ModelFile:
    gguf: Path
    source: Path  # what the user named
    converted: bool  # True when `gguf` was made from a Hugging Face directory (now or earlier)
    cache_hit: bool = False


def resolve_model(model: str | Path, *, reporter: Reporter = SILENT) -> ModelFile:
    path = resolve_source(model)
    if path.is_dir():
        return _converted(path, reporter)
    if not path.exists():
        raise PhiquantError("no such file or directory", path=path)
    if not _is_gguf(path):
        raise PhiquantError("not a GGUF file or a Hugging Face model directory", path=path)
    return ModelFile(gguf=path, source=path, converted=False)


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as error:
        raise PhiquantError(f"cannot read the model: {error.strerror}", path=path) from None


def checkpoint_fingerprint(directory: Path) -> str:
    """A key that changes whenever a file of the checkpoint (or phiquant's converter) changes."""
    digest = hashlib.sha256(f"phiquant {__version__}\n".encode())
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if not files:
        raise PhiquantError("the directory is empty; expected a Hugging Face checkpoint", path=directory)
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def converted_cache_root() -> Path:
    return cache_dir() / "converted"


def _converted(directory: Path, reporter: Reporter) -> ModelFile:
    from phiquant import api  # the runtime is imported by api users; import the converter lazily

    source = directory.resolve()
    entry = converted_cache_root() / f"{_safe_name(source.name)}-{checkpoint_fingerprint(source)}"
    target = entry / "model.gguf"
    if target.is_file():
        reporter.note(f"using the GGUF converted earlier from {source}: {target}")
        return ModelFile(gguf=target, source=directory, converted=True, cache_hit=True)
    reporter.note(f"converting {source} to GGUF once; the result is cached in {entry}")
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhiquantError(f"cannot create the conversion cache: {error.strerror}", path=entry) from None
    api.convert(source, target, "auto", reporter=reporter)
    temporary_files.write_text(entry / SOURCE_RECORD, json.dumps({"source": str(source)}))
    _remove_stale_entries(source, keep=entry)
    return ModelFile(gguf=target, source=directory, converted=True)


def _remove_stale_entries(source: Path, keep: Path) -> None:
    """Drop earlier conversions of the same directory: they describe files that no longer exist."""
    for entry in converted_cache_root().iterdir():
        if entry == keep or not entry.is_dir():
            continue
        try:
            recorded = json.loads((entry / SOURCE_RECORD).read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded == str(source):
            shutil.rmtree(entry, ignore_errors=True)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "model"
