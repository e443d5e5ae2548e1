"""A corpus of hand-made malicious model files, one per attack the issue names: truncated files,
huge counts, negative and overflowing offsets, wrong alignment, duplicate tensor names, non-UTF-8
strings; for GGUF (inspect, quantize from GGUF) and safetensors (convert).

Each one must be refused through the CLI with one line naming the file (exit 2, no traceback), and
reading it must stay within a small memory budget: a reader that believed a count of 2^60 would
allocate for it before finding out the file is 200 bytes long.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from phiquant import cli
from phiquant.checkpoint.safetensors import read_safetensors_header
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from tests.fixtures.phi3_specs import PHI3_MINI_4K
from tests.gguf_io.crafted import gguf_file, gguf_string, kv_string, kv_u32, tensor_info
from tests.security.seeds import tiny_phi3_gguf_bytes

ARCH = b"general.architecture"
# Python allocations a reader may make for one of these files (they are all under 2 KB, the valid
# seed included): far above what parsing needs, far below what any believed count would cost.
MEMORY_BUDGET = 4 << 20


def arch(value: bytes = b"phi3") -> bytes:
    return kv_string(ARCH, value)


def f32_tensor(name: bytes, offset: int, n: int = 32) -> bytes:
    return tensor_info(name, (n,), 0, offset)


GGUF_CORPUS: dict[str, tuple[bytes, str]] = {
    "truncated header": (tiny_phi3_gguf_bytes()[:100], "runs past the end|truncated"),
    "truncated data": (tiny_phi3_gguf_bytes()[:-64], "runs past the end"),
    "empty file": (b"", "GGUF|short|magic"),
    "huge metadata count": (gguf_file([arch()], [], b"", n_kv=1 << 60), "claims"),
    "huge tensor count": (gguf_file([arch()], [], b"", n_tensors=(1 << 64) - 1), "claims"),
    "huge string length": (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", (1 << 64) - 1) + b"key" + bytes(16),
        "runs past the end",
    ),
    "huge array count": (
        gguf_file([arch(), gguf_string(b"arr") + struct.pack("<IIQ", 9, 4, 1 << 62)], [], b""),
        "more than the file can hold",
    ),
    "huge string array count": (
        gguf_file(
            [arch(), gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 1 << 40)], [], b""
        ),
        "more than the file can hold",
    ),
    "huge tensor dimensions": (
        gguf_file([arch()], [tensor_info(b"t", (1 << 40, 1 << 40), 0, 0)], bytes(64)),
        "runs past the end|too large|dimension",
    ),
    "overflowing tensor offset": (
        gguf_file([arch()], [f32_tensor(b"t", (1 << 64) - 32)], bytes(256)),
        "runs past the end",
    ),
    "offset wrapping into the file": (
        gguf_file([arch()], [f32_tensor(b"a", 0), f32_tensor(b"b", (1 << 64) - 128)], bytes(512)),
        "runs past the end|overlap",
    ),
    "misaligned tensor": (gguf_file([arch()], [f32_tensor(b"t", 4)], bytes(256)), "not aligned"),
    "alignment not a power of two": (
        gguf_file([arch(), kv_u32(b"general.alignment", 24)], [], b""),
        "power of two",
    ),
    "alignment zero": (
        gguf_file([arch(), kv_u32(b"general.alignment", 0)], [], b""),
        "power of two|alignment",
    ),
    "duplicate tensor names": (
        gguf_file([arch()], [f32_tensor(b"t", 0), f32_tensor(b"t", 128)], bytes(512)),
        "appears twice",
    ),
    "duplicate metadata keys": (gguf_file([arch(b"x"), arch(b"y")], [], b""), "appears twice"),
    "overlapping tensors": (
        gguf_file([arch()], [f32_tensor(b"a", 0), f32_tensor(b"b", 64)], bytes(512)),
        "overlap",
    ),
    "non-UTF-8 metadata value": (gguf_file([arch(b"\xff\xfe")], [], b""), "not valid UTF-8"),
    "non-UTF-8 tensor name": (
        gguf_file([arch()], [f32_tensor(b"\xc3\x28", 0)], bytes(256)),
        "not valid UTF-8",
    ),
    "unknown ggml type": (
        gguf_file([arch()], [tensor_info(b"t", (32,), 2**32 - 1, 0)], bytes(256)),
        "unknown ggml type",
    ),
    "negative-looking tensor dimension count": (
        gguf_file([arch()], [gguf_string(b"t") + struct.pack("<I", 2**32 - 1)], bytes(64)),
        "dimensions|runs past the end",
    ),
}


def safetensors_bytes(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def f32(offsets: list[int], shape: list[int] | None = None) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape or [4], "data_offsets": offsets}


SAFETENSORS_CORPUS: dict[str, tuple[bytes, str]] = {
    "shorter than its length field": (b"\x10\x00", "shorter than its 8-byte"),
    "truncated data": (safetensors_bytes({"w": f32([0, 16])}, bytes(8)), "truncated"),
    "truncated header": (safetensors_bytes({"w": f32([0, 16])}, length=500), "truncated"),
    "huge header length": (safetensors_bytes({}, length=(1 << 64) - 1), "claims"),
    "huge shape": (safetensors_bytes({"w": f32([0, 16], [1 << 62, 1 << 62])}, bytes(16)), "needs"),
    "huge tensor count": (
        safetensors_bytes({f"t{i}": f32([0, 16]) for i in range(20)} | {"w": f32([0, 1 << 63])}, bytes(16)),
        "truncated|overlap",
    ),
    "negative offset": (safetensors_bytes({"w": f32([-16, 0])}, bytes(16)), "invalid data_offsets"),
    "negative dimension": (safetensors_bytes({"w": f32([0, 16], [-4])}, bytes(16)), "invalid shape"),
    "overflowing offset": (
        safetensors_bytes({"w": f32([(1 << 64) - 8, (1 << 64) + 8])}, bytes(16)),
        "truncated",
    ),
    "reversed offsets": (safetensors_bytes({"w": f32([16, 0])}, bytes(16)), "invalid data_offsets"),
    "boolean offsets": (safetensors_bytes({"w": f32([False, True])}, bytes(16)), "invalid data_offsets"),
    "overlapping tensors": (
        safetensors_bytes({"a": f32([0, 16]), "b": f32([8, 24])}, bytes(24)),
        "overlap",
    ),
    "duplicate tensor names": (
        safetensors_bytes(
            b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": '
            b'{"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
            bytes(8),
        ),
        "appears twice",
    ),
    "non-UTF-8 header": (safetensors_bytes(b'{"\xff\xfe": 1}'), "not valid JSON"),
    "deeply nested header": (safetensors_bytes(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "integer past the digit limit": (
        safetensors_bytes(b'{"w": {"shape": [' + b"9" * 5000 + b"]}}"),
        "not valid JSON",
    ),
    "unsupported dtype": (
        safetensors_bytes({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16)),
        "dtype I64",
    ),
}


def within_memory_budget(call: Callable[[], object]) -> PhiquantError:
    """Run a reader that must refuse its input; return the error, checking the peak allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(PhiquantError) as error:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BUDGET, f"reading a tiny crafted file allocated {peak / 2**20:.1f} MiB"
    return error.value


def run_cli(*argv: object) -> tuple[int, str, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_refused_in_one_line(code: int, stderr: str, path: Path, message: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("phiquant: error:") and str(path) in line
    assert re.search(message, line), line


@pytest.mark.parametrize("name", list(GGUF_CORPUS))
def test_malicious_gguf_is_refused_cleanly_within_bounded_memory(tmp_path: Path, name: str) -> None:
    content, message = GGUF_CORPUS[name]
    path = tmp_path / "evil.gguf"
    path.write_bytes(content)
    error = within_memory_budget(lambda: read_gguf(path))
    assert str(path) in str(error)
    for argv in (
        ("inspect", path),
        ("quantize", path, "-t", "Q8_0", "-o", tmp_path / "out", "--allow-requantize"),
    ):
        code, _, stderr = run_cli(*argv)
        assert_refused_in_one_line(code, stderr, path, message)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name", list(SAFETENSORS_CORPUS))
def test_malicious_safetensors_is_refused_cleanly_within_bounded_memory(tmp_path: Path, name: str) -> None:
    content, message = SAFETENSORS_CORPUS[name]
    path = tmp_path / "evil.safetensors"
    path.write_bytes(content)
    error = within_memory_budget(lambda: read_safetensors_header(path))
    assert str(path) in str(error) and re.search(message, error.message)


@pytest.fixture(scope="module")
def small_checkpoint(shared_phi3_checkpoint) -> Path:
    return shared_phi3_checkpoint(PHI3_MINI_4K)


@pytest.mark.parametrize(
    "name", ["truncated data", "overflowing offset", "duplicate tensor names", "huge header length"]
)
def test_convert_refuses_a_checkpoint_with_a_malicious_shard(
    small_checkpoint, tmp_path: Path, name: str
) -> None:
    """The same files as the first shard of a real checkpoint, through `phiquant convert`."""
    content, message = SAFETENSORS_CORPUS[name]
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    for file in small_checkpoint.iterdir():
        if file.suffix != ".safetensors":
            os.link(file, directory / file.name)
    shards = sorted(small_checkpoint.glob("*.safetensors"))
    for shard in shards[1:]:
        os.link(shard, directory / shard.name)
    evil = directory / shards[0].name
    evil.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    code, _, stderr = run_cli("convert", directory, "-o", out / "m.gguf")
    assert_refused_in_one_line(code, stderr, evil, message)
    assert list(out.iterdir()) == []
