"""The GGUF reader reads what the writer wrote and refuses crafted files with a clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFOutput, Metadatum, TensorInfo, read_gguf
from tests.gguf_io.crafted import gguf_file, gguf_string, kv_string, kv_u32, tensor_info

ARCH = b"general.architecture"


def write_small_gguf(path: Path) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    b = np.linspace(-1, 1, 32, dtype=np.float16)
    metadata = [
        Metadatum("general.name", "tiny", GGUFValueType.STRING),
        Metadatum("tiny.block_count", 2, GGUFValueType.UINT32),
        Metadatum("tokenizer.ggml.tokens", ["a", "b", "ü"], GGUFValueType.ARRAY, GGUFValueType.STRING),
        Metadatum("tokenizer.ggml.scores", [0.5, -1.0, 2.0], GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    ]
    tensors = [TensorInfo("a.weight", (32, 2), 0, a.nbytes), TensorInfo("b.weight", (32,), 1, b.nbytes)]
    with GGUFOutput(path, "tiny", metadata, tensors) as out:
        out.write(a)
        out.write(b)
    return a, b


def test_written_file_reads_back_with_our_reader_and_ggufs(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    a, b = write_small_gguf(path)
    ours = read_gguf(path)
    assert ours.arch == "tiny"
    assert [m.key for m in ours.metadata] == [
        "general.architecture",
        "general.name",
        "tiny.block_count",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
    ]
    assert ours.get("tokenizer.ggml.tokens") == ["a", "b", "ü"]
    np.testing.assert_array_equal(ours.raw_bytes(ours.tensor("a.weight")).view(np.float32).reshape(2, 32), a)
    # gguf's own reader is the oracle for the layout
    theirs = GGUFReader(path)
    assert [t.name for t in theirs.tensors] == ["a.weight", "b.weight"]
    assert [int(t.data_offset) for t in theirs.tensors] == [t.offset for t in ours.tensors]
    np.testing.assert_array_equal(np.asarray(theirs.tensors[1].data), b)


def test_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    tensors = [TensorInfo("a.weight", (32,), 0, 128)]
    with pytest.raises(KeyboardInterrupt), GGUFOutput(path, "tiny", [], tensors) as out:
        out.write(np.zeros(16, dtype=np.float32))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def crafted(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "crafted.gguf"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GGML" + bytes(40), "bad magic"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(16), "unsupported GGUF version"),
        (gguf_file([kv_string(ARCH, b"x")], [], b"", n_kv=1 << 60), "claims"),
        (gguf_file([kv_string(ARCH, b"x")], [], b"", n_tensors=1 << 58), "claims"),
        (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"key" + bytes(16),
            "runs past the end",
        ),
        (gguf_file([kv_string(ARCH, b"\xff\xfe")], [], b""), "not valid UTF-8"),
        (gguf_file([kv_string(ARCH, b"x"), kv_string(ARCH, b"y")], [], b""), "appears twice"),
        (
            gguf_file([kv_string(ARCH, b"x")], [tensor_info(b"t", (32,), 0, 0)], b"\0" * 16),
            "runs past the end",
        ),
        (gguf_file([kv_string(ARCH, b"x")], [tensor_info(b"t", (32,), 0, 4)], b"\0" * 256), "not aligned"),
        (
            gguf_file([kv_string(ARCH, b"x")], [tensor_info(b"t", (32,), 77, 0)], b"\0" * 256),
            "unknown ggml type",
        ),
        (
            gguf_file([kv_string(ARCH, b"x")], [tensor_info(b"t", (30,), 8, 0)], b"\0" * 256),
            "not a multiple of its block",
        ),
        (
            gguf_file([kv_string(ARCH, b"x")], [tensor_info(b"t", (1, 2, 3, 4, 5), 0, 0)], b"\0" * 512),
            "dimensions",
        ),
        (
            gguf_file(
                [kv_string(ARCH, b"x")],
                [tensor_info(b"t", (32,), 0, 0), tensor_info(b"t", (32,), 0, 128)],
                b"\0" * 512,
            ),
            "appears twice",
        ),
        (
            gguf_file(
                [kv_string(ARCH, b"x")],
                [tensor_info(b"a", (32,), 0, 0), tensor_info(b"b", (32,), 0, 64)],
                b"\0" * 512,
            ),
            "overlap",
        ),
        (gguf_file([kv_string(ARCH, b"x"), kv_u32(b"general.alignment", 24)], [], b""), "power of two"),
        (
            gguf_file([kv_string(ARCH, b"x"), gguf_string(b"arr") + struct.pack("<IIQ", 9, 9, 1)], [], b""),
            "array of arrays",
        ),
        (
            gguf_file(
                [kv_string(ARCH, b"x"), gguf_string(b"arr") + struct.pack("<IIQ", 9, 4, 1 << 40)], [], b""
            ),
            "more than the file can hold",
        ),
    ],
)
def test_crafted_files_are_refused_with_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = crafted(tmp_path, content)
    with pytest.raises(PhiquantError, match=message) as error:
        read_gguf(path)
    assert str(path) in str(error.value)
