"""What the runtime commands accept as MODEL: a GGUF file, or a Hugging Face directory converted once.

A Hugging Face checkpoint is converted (`api.convert`, outtype auto: the checkpoint's own precision)
into phiquant's cache and reused while the checkpoint is unchanged.  The cache key is the checkpoint's
fingerprint (phiquant.cache) and phiquant's version, so an edited checkpoint is converted again and the
stale copy removed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from phiquant.cache import CONVERTED, cache_key, fingerprint, sub_cache
from phiquant.errors import PhiquantError
from phiquant.hub import resolve_source
from phiquant.progress import SILENT, Reporter
from phiquant.version import __version__

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


def checkpoint_key(directory: Path) -> str:
    """A key that changes whenever a file of the checkpoint (or phiquant's converter) changes."""
    if not any(p.is_file() for p in directory.iterdir()):
        raise PhiquantError("the directory is empty; expected a Hugging Face checkpoint", path=directory)
    return cache_key(fingerprint(directory), __version__)[:20]


def converted_cache_root() -> Path:
    return sub_cache(CONVERTED)


def _converted(directory: Path, reporter: Reporter) -> ModelFile:
    from phiquant import api  # the runtime is imported by api users; import the converter lazily

    source = directory.resolve()
    entry = converted_cache_root() / f"{_safe_name(source.name)}-{checkpoint_key(source)}"
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
    (entry / SOURCE_RECORD).write_text(json.dumps({"source": str(source)}))
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
