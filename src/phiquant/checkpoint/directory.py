"""A Hugging Face model directory: its JSON files and an index of its weights, nothing read yet."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiquant.checkpoint.files import MAX_JSON_BYTES, contained_file, directory_root
from phiquant.checkpoint.safetensors import PICKLE_SUFFIXES, read_safetensors_header
from phiquant.checkpoint.tensor_entry import TensorEntry
from phiquant.errors import PhiquantError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# The names transformers' save_pretrained gives pickled weights (safe_serialization=False).
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_SINGLE_FILE = "pytorch_model.bin"

WeightFileReader = Callable[[Path], Sequence[TensorEntry]]


@dataclass
class Checkpoint:
    """The files of one Hugging Face checkpoint directory, parsed lazily."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorEntry]
    _json_cache: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)

    def file(self, name: str) -> Path | None:
        """A regular file of the checkpoint, or None when absent; a link that leads outside the
        checkpoint is an error (checkpoint.files)."""
        return contained_file(self.path, name, self._root)

    def json_file(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the directory (e.g. tokenizer_config.json), or None when absent."""
        if name not in self._json_cache:
            file = self.file(name)
            self._json_cache[name] = read_json(file) if file is not None else None
        return self._json_cache[name]

    def text_file(self, name: str) -> str | None:
        file = self.file(name)
        if file is None:
            return None
        try:
            if file.stat().st_size > MAX_JSON_BYTES:
                raise PhiquantError(f"is larger than {MAX_JSON_BYTES >> 20} MiB", path=file)
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PhiquantError(f"cannot read as UTF-8 text: {exc}", path=file) from exc

    def has_file(self, name: str) -> bool:
        return self.file(name) is not None

    @property
    def _root(self) -> Path:
        return directory_root(self.path)

    @property
    def generation_config(self) -> dict[str, Any] | None:
        return self.json_file("generation_config.json")

    def tensor(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise PhiquantError(f"the checkpoint has no tensor {name!r}", path=self.path) from None

    def tensor_names(self) -> Iterator[str]:
        return iter(self.tensors)

    @property
    def source_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())


def read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise PhiquantError(
                f"is larger than {MAX_JSON_BYTES >> 20} MiB; not a model's JSON file", path=path
            )
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PhiquantError(f"cannot read: {exc.strerror}", path=path) from exc
    except RecursionError:
        raise PhiquantError("not valid JSON: nested too deeply", path=path) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers past Python's digit limit
        raise PhiquantError(f"not valid JSON: {exc}", path=path) from exc
    if not isinstance(value, dict):
        raise PhiquantError("expected a JSON object", path=path)
    return value


def open_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Index a Hugging Face checkpoint directory: config.json and every tensor's location."""
    directory = Path(path)
    if not directory.exists():
        raise PhiquantError("no such file or directory", path=directory)
    if not directory.is_dir():
        raise PhiquantError("not a Hugging Face model directory (expected a folder)", path=directory)
    config_file = contained_file(directory, "config.json")
    if config_file is None:
        raise PhiquantError("no config.json here: not a Hugging Face model directory", path=directory)
    config = read_json(config_file)
    tensors = _index_weights(directory, allow_pickle=allow_pickle)
    return Checkpoint(directory, config, tensors)


def _index_weights(directory: Path, *, allow_pickle: bool) -> dict[str, TensorEntry]:
    """Safetensors first, as transformers does; pickles only when the user allows them."""
    if contained_file(directory, INDEX_FILE) is not None:
        return _index_sharded(directory, INDEX_FILE, read_safetensors_header)
    if contained_file(directory, SINGLE_FILE) is not None:
        return _entries_by_name([directory / SINGLE_FILE], directory, read_safetensors_header)
    shard_names = sorted(p.name for p in directory.glob("*.safetensors"))
    if shard_names:
        files = [_weight_file(directory, name, directory) for name in shard_names]
        return _entries_by_name(files, directory, read_safetensors_header)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise PhiquantError("no model weights here (no *.safetensors files)", path=directory)
    if not allow_pickle:
        # Pickled PyTorch weights can run arbitrary code when loaded (checkpoint.pytorch_pickle).
        raise PhiquantError(
            f"only PyTorch pickle weights here ({', '.join(pickles[:3])}), which can run code when loaded; "
            "phiquant reads safetensors. If you trust where they came from, pass --allow-pickle to read "
            "them with torch's weights-only loader (it never runs code)",
            path=directory,
        )
    return _index_pickles(directory, pickles)


def _index_pickles(directory: Path, pickles: list[str]) -> dict[str, TensorEntry]:
    from phiquant.checkpoint.pytorch_pickle import read_pickle_weights

    if contained_file(directory, PICKLE_INDEX_FILE) is not None:
        return _index_sharded(directory, PICKLE_INDEX_FILE, read_pickle_weights)
    if contained_file(directory, PICKLE_SINGLE_FILE) is not None:
        return _entries_by_name([directory / PICKLE_SINGLE_FILE], directory, read_pickle_weights)
    raise PhiquantError(
        f"no {PICKLE_SINGLE_FILE} or {PICKLE_INDEX_FILE}, the names transformers saves pickled weights "
        f"under (found {', '.join(pickles[:3])}, which may be training state rather than weights)",
        path=directory,
    )


def _weight_file(directory: Path, name: str, named_by: Path) -> Path:
    """A shard named by an index (or found by a glob): a plain name of a regular file that stays
    inside the checkpoint, so a crafted index cannot make phiquant read /etc or ~/.ssh."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).name != name:
        raise PhiquantError(f"names a shard outside the directory: {name!r}", path=named_by)
    file = contained_file(directory, name)
    if file is None:
        raise PhiquantError(f"names shard {name} which is missing", path=named_by)
    return file


def _index_sharded(
    directory: Path, index_name: str, read_weights: WeightFileReader
) -> dict[str, TensorEntry]:
    index_file = directory / index_name
    index = read_json(index_file)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise PhiquantError("has no valid weight_map", path=index_file)
    shard_files = [_weight_file(directory, s, index_file) for s in sorted(set(weight_map.values()))]
    entries = _entries_by_name(shard_files, directory, read_weights)
    for name, shard in weight_map.items():
        entry = entries.get(name)
        if entry is None or entry.file.name != shard:
            raise PhiquantError(f"says tensor {name!r} is in {shard}, but it is not there", path=index_file)
    return entries


def _entries_by_name(
    files: list[Path], directory: Path, read_weights: WeightFileReader
) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    for file in files:
        for entry in read_weights(file):
            if entry.name in entries:
                raise PhiquantError(
                    f"tensor {entry.name!r} is in both {entries[entry.name].file.name} and {file.name}",
                    path=directory,
                )
            entries[entry.name] = entry
    return entries
