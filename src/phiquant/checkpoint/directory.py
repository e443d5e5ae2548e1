"""A Hugging Face model directory: its JSON files and an index of its weights, nothing read yet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiquant.checkpoint.safetensors import (
    PICKLE_SUFFIXES,
    SafetensorsEntry,
    read_safetensors_header,
)
from phiquant.errors import PhiquantError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class Checkpoint:
    """The files of one Hugging Face checkpoint directory, parsed lazily."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, SafetensorsEntry]
    _json_cache: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)

    def json_file(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the directory (e.g. tokenizer_config.json), or None when absent."""
        if name not in self._json_cache:
            file = self.path / name
            self._json_cache[name] = read_json(file) if file.is_file() else None
        return self._json_cache[name]

    def text_file(self, name: str) -> str | None:
        file = self.path / name
        if not file.is_file():
            return None
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PhiquantError(f"cannot read as UTF-8 text: {exc}", path=file) from exc

    def has_file(self, name: str) -> bool:
        return (self.path / name).is_file()

    @property
    def generation_config(self) -> dict[str, Any] | None:
        return self.json_file("generation_config.json")

    def tensor(self, name: str) -> SafetensorsEntry:
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
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PhiquantError(f"cannot read: {exc.strerror}", path=path) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise PhiquantError("no config.json here: not a Hugging Face model directory", path=directory)
    config = read_json(config_file)
    tensors = _index_weights(directory, allow_pickle=allow_pickle)
    return Checkpoint(directory, config, tensors)


def _index_weights(directory: Path, *, allow_pickle: bool) -> dict[str, SafetensorsEntry]:
    index_file = directory / INDEX_FILE
    if index_file.is_file():
        return _index_sharded(directory, index_file)
    single = directory / SINGLE_FILE
    shard_files = [single] if single.is_file() else sorted(directory.glob("*.safetensors"))
    if shard_files:
        return _entries_by_name(shard_files, directory)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        # Pickled PyTorch weights can run arbitrary code when loaded; see issue "untrusted files".
        raise PhiquantError(
            f"only PyTorch pickle weights here ({', '.join(pickles[:3])}); phiquant reads safetensors. "
            "Convert them with a trusted tool first, or pass --allow-pickle to load them with torch's "
            "weights-only loader",
            path=directory,
        )
    raise PhiquantError("no model weights here (no *.safetensors files)", path=directory)


def _index_sharded(directory: Path, index_file: Path) -> dict[str, SafetensorsEntry]:
    index = read_json(index_file)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise PhiquantError("has no valid weight_map", path=index_file)
    shard_names = sorted(set(weight_map.values()))
    for shard in shard_names:
        if Path(shard).name != shard:
            raise PhiquantError(f"names a shard outside the directory: {shard!r}", path=index_file)
        if not (directory / shard).is_file():
            raise PhiquantError(f"names shard {shard} which is missing", path=index_file)
    entries = _entries_by_name([directory / s for s in shard_names], directory)
    for name, shard in weight_map.items():
        entry = entries.get(name)
        if entry is None or entry.file.name != shard:
            raise PhiquantError(f"says tensor {name!r} is in {shard}, but it is not there", path=index_file)
    return entries


def _entries_by_name(files: list[Path], directory: Path) -> dict[str, SafetensorsEntry]:
    entries: dict[str, SafetensorsEntry] = {}
    for file in files:
        for entry in read_safetensors_header(file):
            if entry.name in entries:
                raise PhiquantError(
                    f"tensor {entry.name!r} is in both {entries[entry.name].file.name} and {file.name}",
                    path=directory,
                )
            entries[entry.name] = entry
    return entries
