"""Fuzzing the JSON files of a Hugging Face checkpoint: config.json, generation_config.json, the
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json)
and the shard index.  A real Phi-3 checkpoint gets one file damaged (a hostile value at a real key,
a key removed, the whole file replaced); indexing it, mapping it to a GGUF model and planning a
quantization must succeed or raise PhiquantError, never anything else."""

from __future__ import annotations

import itertools
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from phiquant import api
from phiquant.errors import PhiquantError
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.phi4_specs import PHI4
from tests.security.fuzzing import accepts_or_refuses_cleanly, fuzz_settings
from tests.security.test_fuzz_safetensors import ANY_JSON, INT_EDGES

JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "model.safetensors.index.json",
)
BPE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Shard names an index might give: real ones, escapes from the directory, and files that are not shards.
SHARD_NAMES = st.sampled_from(
    [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "../model-00001-of-00002.safetensors",
        "/etc/passwd",
        "",
        ".",
        "..",
        "a\x00b",
        "sub/dir.safetensors",
        "..\\x.safetensors",
        "config.json",
        "tokenizer.model",
        "model.safetensors.index.json",
    ]
)
HOSTILE_VALUE = (
    ANY_JSON | st.sampled_from(INT_EDGES) | SHARD_NAMES | st.just({"content": 5}) | st.just([{"id": -1}])
)


@pytest.fixture(scope="module")
def base_checkpoint(shared_phi3_checkpoint) -> Path:
    return shared_phi3_checkpoint(PHI35_MINI)  # sharded, LongRoPE: the most keys


@pytest.fixture(scope="module")
def bpe_checkpoint(shared_bpe_checkpoint) -> Path:
    return shared_bpe_checkpoint(PHI4)  # byte-level BPE tokenizer.json: the other tokenizer reader


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-checkpoint")


Path_ = tuple[Any, ...]


def json_paths(document: Any, depth: int = 3) -> list[Path_]:
    """Paths to values in a JSON document, a few per container (tokenizer.json's vocabulary has
    32000 keys; its first ones say as much about the reader as all of them)."""
    if depth == 0:
        return []
    if isinstance(document, dict):
        children = itertools.islice(document.items(), 24)
    elif isinstance(document, list):
        children = itertools.islice(enumerate(document), 4)
    else:
        return []
    paths: list[Path_] = []
    for key, child in children:
        paths.append((key,))
        paths += [(key, *rest) for rest in json_paths(child, depth - 1)]
    return paths


def damage(document: Any, path: Path_, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


@st.composite
def damaged_file(
    draw: st.DrawFn, checkpoint: Path, names: tuple[str, ...] = JSON_FILES
) -> tuple[str, bytes, str]:
    """(file name, new content, what was done)."""
    name = draw(st.sampled_from([n for n in names if (checkpoint / n).exists()]))
    text = (checkpoint / name).read_text(encoding="utf-8")
    how = draw(st.sampled_from(["value", "value", "value", "delete", "whole", "bytes"]))
    if how == "bytes":
        raw = draw(
            st.sampled_from(
                [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"9" * 5000 + b"}", b""]
            )
            | st.binary(max_size=16)
        )
        return name, raw, "raw bytes"
    document = json.loads(text)
    paths = json_paths(document)
    if how == "whole" or not paths:
        return name, json.dumps(draw(HOSTILE_VALUE)).encode(), "whole file"
    path = draw(st.sampled_from(paths))
    value = draw(
        st.dictionaries(SHARD_NAMES, SHARD_NAMES, max_size=3) if path == ("weight_map",) else HOSTILE_VALUE
    )
    damaged = damage(document, path, value, delete=how == "delete")
    return name, json.dumps(damaged).encode(), f"{how} at {path!r}"


def checkpoint_with(base: Path, directory: Path, name: str, content: bytes) -> Path:
    """A copy of `base` (hard links: cheap, and regular files inside the directory) with one file replaced."""
    directory.mkdir()
    for file in base.iterdir():
        if file.name != name:
            os.link(file, directory / file.name)
    (directory / name).write_bytes(content)
    return directory


COUNTER = itertools.count()


def test_the_unharmed_checkpoints_plan_a_quantization(base_checkpoint, bpe_checkpoint, tmp_path) -> None:
    """The fuzz targets work on the base checkpoints, so a refusal below is the damage's doing."""
    for checkpoint in (base_checkpoint, bpe_checkpoint):
        result = api.quantize(checkpoint, "Q8_0", tmp_path, dry_run=True)
        assert result.files[0].file_size > 0


@fuzz_settings(max_examples=120)
@given(data=st.data())
def test_damaged_checkpoint_json_is_used_or_refused_cleanly(base_checkpoint, workdir, data) -> None:
    name, content, how = data.draw(damaged_file(base_checkpoint))
    directory = checkpoint_with(base_checkpoint, workdir / f"c{next(COUNTER)}", name, content)
    result = accepts_or_refuses_cleanly(lambda: api.quantize(directory, "Q8_0", workdir, dry_run=True))
    event(f"{name}: {'refused' if isinstance(result, PhiquantError) else 'accepted'}")


# Each example loads a 100k-token tokenizer.json with `tokenizers` (about a second), so fewer examples,
# aimed at the two files only the BPE reader interprets; the Phi-3 test above covers the others.
@fuzz_settings(max_examples=12, deadline=timedelta(seconds=15))
@given(data=st.data())
def test_damaged_bpe_checkpoint_json_is_used_or_refused_cleanly(bpe_checkpoint, workdir, data) -> None:
    name, content, how = data.draw(damaged_file(bpe_checkpoint, BPE_TOKENIZER_FILES))
    directory = checkpoint_with(bpe_checkpoint, workdir / f"c{next(COUNTER)}", name, content)
    result = accepts_or_refuses_cleanly(lambda: api.quantize(directory, "Q8_0", workdir, dry_run=True))
    event(f"{name}: {'refused' if isinstance(result, PhiquantError) else 'accepted'}")
