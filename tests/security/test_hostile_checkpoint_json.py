"""Named hostile values in a checkpoint's JSON files, each refused by `phiquant convert` with one line
naming the file and the key (the fuzzers in test_fuzz_checkpoint_files.py found most of these)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from phiquant import cli
from tests.fixtures.phi3_specs import PHI35_MINI

# (file, key path, value, words the error line must hold)
CASES: list[tuple[str, tuple[Any, ...], Any, str]] = [
    ("config.json", ("rms_norm_eps",), "abc", "rms_norm_eps must be a finite number"),
    ("config.json", ("rms_norm_eps",), 10**400, "rms_norm_eps must be a finite number"),
    ("config.json", ("rope_theta",), [1, 2], "rope_theta must be a finite number"),
    ("config.json", ("hidden_size",), True, "hidden_size must be a positive integer"),
    ("config.json", ("num_key_value_heads",), -4, "num_key_value_heads must be a positive integer"),
    ("config.json", ("partial_rotary_factor",), -1, "partial_rotary_factor must be a number in (0, 1]"),
    ("config.json", ("rope_scaling",), [1, 2], "rope_scaling must be an object"),
    ("config.json", ("rope_scaling", "long_factor"), {"a": 1}, "rope_scaling.long_factor must be a list"),
    ("config.json", ("rope_scaling", "short_factor"), ["x"] * 32, "rope_scaling.short_factor must be a list"),
    (
        "config.json",
        ("original_max_position_embeddings",),
        None,
        "LongRoPE needs original_max_position_embeddings",
    ),
    ("config.json", ("eos_token_id",), "</s>", "eos_token_id must be a token id"),
    ("tokenizer.json", ("added_tokens",), {"id": 1}, "added_tokens must be a list"),
    ("tokenizer.json", ("added_tokens", 0), [1, 2], "malformed added token"),
    ("tokenizer.json", ("added_tokens", 0, "id"), -1, "malformed added token"),
    ("tokenizer.json", ("added_tokens", 0, "id"), 2**40, "malformed added token"),
    ("tokenizer_config.json", ("added_tokens_decoder",), [1], "added_tokens_decoder must be an object"),
    ("tokenizer_config.json", ("chat_template",), [{"name": 1, "template": "x"}], "chat_template is neither"),
]


@pytest.fixture(scope="module")
def base_checkpoint(shared_phi3_checkpoint) -> Path:
    return shared_phi3_checkpoint(PHI35_MINI)


def with_value(base: Path, directory: Path, file: str, path: tuple[Any, ...], value: Any) -> Path:
    directory.mkdir()
    for entry in base.iterdir():
        if entry.name != file:
            os.link(entry, directory / entry.name)
    document = json.loads((base / file).read_text(encoding="utf-8"))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    (directory / file).write_text(json.dumps(document), encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("file", "path", "value", "message"),
    CASES,
    ids=[f"{c[0]}:{'.'.join(map(str, c[1]))}={c[2]!r:.20}" for c in CASES],
)
def test_hostile_json_value_is_refused_in_one_line(
    base_checkpoint, tmp_path, file, path, value, message
) -> None:
    checkpoint = with_value(base_checkpoint, tmp_path / "checkpoint", file, path, value)
    out = tmp_path / "out"
    out.mkdir()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(["convert", str(checkpoint), "-o", str(out / "m.gguf")])
    stderr = err.getvalue()
    assert code == 2 and "Traceback" not in stderr, stderr
    (line,) = stderr.strip().splitlines()
    assert str(checkpoint) in line and message in line, line
    assert list(out.iterdir()) == []
