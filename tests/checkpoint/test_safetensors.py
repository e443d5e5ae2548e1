"""The safetensors header parser refuses malformed files with one clear error, before reading data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from phiquant.checkpoint.safetensors import read_safetensors_header
from phiquant.errors import PhiquantError


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def bf16_bytes(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def test_bf16_tensor_reads_back_exactly_as_float32(tmp_path: Path) -> None:
    values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65504.0]], dtype=np.float32)
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)  # exactly representable in BF16
    data = bf16_bytes(values)
    path = write_safetensors(
        tmp_path / "a.safetensors",
        {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(data)]}},
        data,
    )
    (entry,) = read_safetensors_header(path)
    np.testing.assert_array_equal(entry.read(), values)
    np.testing.assert_array_equal(entry.read(1, 2), values[1:2])


def test_f16_rows_read_through_a_partial_map(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float16).reshape(4, 3)
    data = values.tobytes()
    path = write_safetensors(
        tmp_path / "a.safetensors",
        {
            "__metadata__": {"format": "pt"},
            "w": {"dtype": "F16", "shape": [4, 3], "data_offsets": [0, len(data)]},
        },
        data,
    )
    (entry,) = read_safetensors_header(path)
    np.testing.assert_array_equal(entry.read(2, 4), values[2:4].astype(np.float32))


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "needs 16"),
        ({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16, "dtype I64"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8, "invalid data_offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
        ([1, 2, 3], b"", "not a JSON object"),
    ],
)
def test_malformed_headers_are_refused_naming_the_file(
    tmp_path: Path, header: object, data: bytes, message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    with pytest.raises(PhiquantError, match=message) as error:
        read_safetensors_header(path)
    assert str(path) in str(error.value)


def test_header_length_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(PhiquantError, match="truncated"):
        read_safetensors_header(path)


def test_duplicate_tensor_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.safetensors"
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(PhiquantError, match="appears twice"):
        read_safetensors_header(path)


def test_non_utf8_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bin.safetensors"
    raw = b"\xff\xfe{}"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(PhiquantError, match="not valid JSON"):
        read_safetensors_header(path)
