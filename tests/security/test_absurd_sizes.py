"""Absurd sizes in config.json, the tokenizer files and GGUF headers: refused at once, naming the key.

Each value would otherwise drive a loop or an allocation (a billion layers' tensor names, a billion
experts, a vocabulary padded to a billion entries, a metadata array of 2^40 strings).  The bound on the
time is generous on purpose: a loop over the absurd value takes minutes, a check takes milliseconds,
so the bound only separates "checked first" from "looped".  It is on the process's CPU time (with a
loose wall-time bound beside it), which other work on the machine does not inflate.
"""

from __future__ import annotations

import contextlib
import io
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from phiquant import cli
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.gguf_io.crafted import gguf_file, gguf_string, kv_string
from tests.security.test_hostile_checkpoint_json import with_value

# No check may cost more than this much CPU time (the loops these values would drive take minutes
# of it), nor, with a margin for a machine busy with other work, this much wall time.
CPU_SECONDS = 1.0
WALL_SECONDS = 10.0
BILLION = 10**9

# (file, key path, value, words the error line must hold)
PHI3_CASES: list[tuple[str, tuple[Any, ...], Any, str]] = [
    (
        "config.json",
        ("num_hidden_layers",),
        BILLION,
        "num_hidden_layers is 1000000000, more than the 4 layers",
    ),
    ("config.json", ("num_attention_heads",), BILLION, "num_attention_heads is 1000000000"),
    ("config.json", ("num_key_value_heads",), BILLION, "num_key_value_heads is 1000000000"),
    ("config.json", ("hidden_size",), BILLION, "hidden_size is 1000000000"),
    ("config.json", ("intermediate_size",), BILLION, "intermediate_size is 1000000000"),
    ("config.json", ("vocab_size",), BILLION, "vocab_size is 1000000000"),
    ("config.json", ("head_dim",), BILLION, "head_dim is 1000000000"),
    ("config.json", ("rope_scaling", "long_factor"), [1.0] * 100_000, "long_factor has 100000 values"),
    ("tokenizer.json", ("added_tokens", 0, "id"), BILLION, "has id 1000000000"),
    ("tokenizer_config.json", ("added_tokens_decoder", str(BILLION)), None, "has id 1000000000"),
]


def refused_quickly(arguments: list[str]) -> str:
    """Run the CLI in this process; its one error line, after checking the exit code and the time.
    The command runs once untimed first, so the time is the check's, not the first import's."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(arguments)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        started, cpu_started = time.perf_counter(), time.process_time()
        code = cli.main(arguments)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    stderr = err.getvalue()
    assert code == 2 and "Traceback" not in stderr, stderr
    (line,) = stderr.strip().splitlines()
    assert cpu_seconds < CPU_SECONDS and seconds < WALL_SECONDS, (
        f"{cpu_seconds:.2f} CPU s, {seconds:.2f} s: {line}"
    )
    return line


def with_added_token_entry(base: Path, directory: Path, token_id: str) -> Path:
    """tokenizer_config.json with one more added_tokens_decoder entry, at `token_id`."""
    import json

    config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    entry = dict(next(iter(config["added_tokens_decoder"].values())), content="<absurd>")
    return with_value(base, directory, "tokenizer_config.json", ("added_tokens_decoder", token_id), entry)


@pytest.mark.parametrize(
    ("file", "path", "value", "message"),
    PHI3_CASES,
    ids=[f"{c[0]}:{'.'.join(map(str, c[1]))}" for c in PHI3_CASES],
)
def test_absurd_checkpoint_size_is_refused_at_once_naming_the_key(
    shared_phi3_checkpoint, tmp_path, file, path, value, message
) -> None:
    base = shared_phi3_checkpoint(PHI35_MINI)
    if value is None:
        checkpoint = with_added_token_entry(base, tmp_path / "checkpoint", path[-1])
    else:
        checkpoint = with_value(base, tmp_path / "checkpoint", file, path, value)
    out = tmp_path / "out"
    out.mkdir()
    line = refused_quickly(["convert", str(checkpoint), "-o", str(out / "m.gguf")])
    assert str(checkpoint) in line and message in line, line
    assert list(out.iterdir()) == []


def test_absurd_expert_count_is_refused_at_once(shared_phimoe_checkpoint, tmp_path) -> None:
    checkpoint = with_value(
        shared_phimoe_checkpoint(PHI35_MOE), tmp_path / "moe", "config.json", ("num_local_experts",), BILLION
    )
    line = refused_quickly(["convert", str(checkpoint), "-o", str(tmp_path / "m.gguf")])
    assert "config.json" in line and "num_local_experts is 1000000000, more than the" in line, line


def array_header(key: bytes, element_type: int, count: int) -> bytes:
    return gguf_string(key) + struct.pack("<IIQ", 9, element_type, count)


ARCH = b"general.architecture"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            gguf_file(
                [kv_string(ARCH, b"phi3"), array_header(b"tokenizer.ggml.tokens", 8, 1 << 40)], [], b""
            ),
            "'tokenizer.ggml.tokens' claims 1099511627776 elements",
        ),
        (
            gguf_file(
                [kv_string(ARCH, b"phi3"), array_header(b"tokenizer.ggml.scores", 6, 1 << 60)], [], b""
            ),
            "'tokenizer.ggml.scores' claims",
        ),
        (
            gguf_file([kv_string(ARCH, b"phi3")], [], b"", n_kv=1 << 62),
            "claims 4611686018427387904 metadata entries",
        ),
        (gguf_file([kv_string(ARCH, b"phi3")], [], b"", n_tensors=1 << 62), "4611686018427387904 tensors"),
    ],
    ids=["string-array", "float-array", "key-count", "tensor-count"],
)
def test_absurd_gguf_count_is_refused_at_once_by_inspect(tmp_path, content, message) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(content)
    line = refused_quickly(["inspect", str(path)])
    assert str(path) in line and message in line, line
