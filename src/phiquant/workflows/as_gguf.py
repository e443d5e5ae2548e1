"""Any source as a GGUF file: a GGUF itself, or a Hugging Face directory converted at its own precision.

llama.cpp runs GGUF files only, so the runtime (chat, generate, serve), the importance-matrix run, the
budget calibration and `quantize --eval` all start here.  The runtime keeps its conversion in the cache
(phiquant.cache CONVERTED), reused while the checkpoint is unchanged: the key is the checkpoint's
fingerprint and phiquant's version, so an edited checkpoint is converted again and the stale copy
removed.  The others convert into a temporary directory removed when they are done.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phiquant import temporary_files
from phiquant.cache import CONVERTED, cache_key, fingerprint, sub_cache
from phiquant.errors import PhiquantError
from phiquant.hub import resolve_source
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.model_files import ModelFile, gguf_model_file
from phiquant.version import __version__
from phiquant.workflows.convert import convert

SOURCE_RECORD = "source.json"


@contextmanager
def as_gguf(source: str | Path, *, cache: bool = False, reporter: Reporter = SILENT) -> Iterator[ModelFile]:
    """The source as a GGUF file: itself if it is one, else its conversion (outtype auto), kept in the
    conversion cache (`cache`) or in a temporary directory removed on exit."""
    path = resolve_source(source)
    if not path.is_dir():
        yield gguf_model_file(path)
    elif cache:
        yield cached_conversion(path, reporter)
    else:
        with temporary_files.temporary_directory("phiquant-gguf-") as temporary:
            reporter.note(f"converting {path} to GGUF in a temporary directory for llama.cpp")
            converted = convert(path, Path(temporary) / "model.gguf", "auto", reporter=reporter).path
            yield ModelFile(gguf=converted, source=path, converted=True)


def checkpoint_key(directory: Path) -> str:
    """A key that changes whenever a file of the checkpoint (or phiquant's converter) changes."""
    if not any(p.is_file() for p in directory.iterdir()):
        raise PhiquantError("the directory is empty; expected a Hugging Face checkpoint", path=directory)
    return cache_key(fingerprint(directory), __version__)[:20]


def converted_cache_root() -> Path:
    return sub_cache(CONVERTED)


def cached_conversion(directory: Path, reporter: Reporter = SILENT) -> ModelFile:
    source = directory.resolve()
    entry = converted_cache_root() / f"{_safe_name(source.name)}-{checkpoint_key(source)}"
    target = entry / "model.gguf"
    # The source record is written last: without it the conversion stopped part-way (a vision model's
    # projector, written after the language model, may be missing) and is made again.
    if target.is_file() and (entry / SOURCE_RECORD).is_file():
        reporter.note(f"using the GGUF converted earlier from {source}: {target}")
        return ModelFile(gguf=target, source=directory, converted=True, cache_hit=True)
    reporter.note(f"converting {source} to GGUF once; the result is cached in {entry}")
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhiquantError(f"cannot create the conversion cache: {error.strerror}", path=entry) from None
    convert(source, target, "auto", reporter=reporter)
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
