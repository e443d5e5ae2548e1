"""Importance matrix files: our GGUF writer and reader against gguf-py's independent reader and writer, a
legacy .dat written byte by byte from the format description, and damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.imatrix.files import (
    ImatrixEntry,
    ImportanceMatrix,
    imatrix_weights_for_model,
    read_imatrix,
    write_imatrix,
)
from phiquant.quant.plan import TensorDesc
from phiquant.quant.types import GGMLType


def _sample() -> ImportanceMatrix:
    rng = np.random.default_rng(0)
    return ImportanceMatrix(
        entries={
            "blk.0.attn_qkv.weight": ImatrixEntry(
                rng.uniform(0, 50, 256).astype(np.float32), np.array([100], dtype=np.int64)
            ),
            # Four experts; the third saw no tokens.
            "blk.0.ffn_up_exps.weight": ImatrixEntry(
                rng.uniform(0, 50, 4 * 256).astype(np.float32), np.array([7, 30, 0, 3], dtype=np.int64)
            ),
        },
        datasets=("wiki.train.raw",),
        chunk_count=12,
        chunk_size=512,
    )


def test_gguf_imatrix_round_trips_and_normalises_per_expert(tmp_path: Path) -> None:
    original = _sample()
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, original)
    loaded = read_imatrix(path)
    assert (loaded.datasets, loaded.chunk_count, loaded.chunk_size) == (("wiki.train.raw",), 12, 512)
    assert loaded.entries_count == 2 and not loaded.is_legacy
    for name, entry in original.entries.items():
        np.testing.assert_array_equal(loaded.entries[name].in_sum2, entry.in_sum2)
        np.testing.assert_array_equal(loaded.entries[name].counts, entry.counts)
    experts = loaded.weights()["blk.0.ffn_up_exps.weight"].reshape(4, 256)
    sums = original.entries["blk.0.ffn_up_exps.weight"].in_sum2.reshape(4, 256)
    np.testing.assert_array_equal(experts[1], sums[1] / np.float32(30))
    np.testing.assert_array_equal(experts[2], np.ones(256, dtype=np.float32))
    assert experts.dtype == np.float32


def test_written_imatrix_reads_back_with_gguf_py_in_llama_imatrix_layout(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, _sample())
    reader = gguf.GGUFReader(path)
    assert [field for field in reader.fields if not field.startswith("GGUF.")] == [
        "general.type",
        "imatrix.datasets",
        "imatrix.chunk_count",
        "imatrix.chunk_size",
    ]
    assert reader.fields["imatrix.chunk_size"].contents() == 512
    shapes = {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in reader.tensors}
    assert shapes == {
        "blk.0.attn_qkv.weight.in_sum2": (256, 1),
        "blk.0.attn_qkv.weight.counts": (1, 1),
        "blk.0.ffn_up_exps.weight.in_sum2": (256, 4),
        "blk.0.ffn_up_exps.weight.counts": (1, 4),
    }
    counts = next(t for t in reader.tensors if t.name == "blk.0.ffn_up_exps.weight.counts")
    np.testing.assert_array_equal(np.asarray(counts.data).reshape(-1), [7, 30, 0, 3])


def test_imatrix_written_by_gguf_py_reads_with_counts_rounded(tmp_path: Path) -> None:
    path = tmp_path / "other-writer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("imatrix.datasets", ["a.txt", "b.txt"])
    writer.add_uint32("imatrix.chunk_count", 3)
    writer.add_uint32("imatrix.chunk_size", 256)
    writer.add_tensor("blk.0.ffn_down.weight.in_sum2", np.full((1, 64), 6.0, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down.weight.counts", np.array([[2.5]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = read_imatrix(path)
    assert loaded.datasets == ("a.txt", "b.txt")
    assert loaded.entries["blk.0.ffn_down.weight"].counts.tolist() == [3]  # lround(2.5) == 3
    np.testing.assert_array_equal(loaded.weights()["blk.0.ffn_down.weight"], np.full(64, 2.0, np.float32))


def _legacy_bytes(entries: list[tuple[str, int, np.ndarray]], trailer: bytes = b"") -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        out += values.astype("<f4").tobytes()
    return out + trailer


def test_legacy_dat_reads_with_trailing_chunk_count_and_dataset(tmp_path: Path) -> None:
    values = np.arange(1, 33, dtype=np.float32)
    trailer = struct.pack("<i", 17) + struct.pack("<i", 9) + b"wiki.test"
    path = tmp_path / "imatrix.dat"
    entries = [("blk.0.attn_qkv.weight", 4, values), ("output.weight", 0, values)]
    path.write_bytes(_legacy_bytes(entries, trailer))
    loaded = read_imatrix(path)
    assert loaded.is_legacy and loaded.chunk_count == 17 and loaded.datasets == ("wiki.test",)
    weights = loaded.weights()
    np.testing.assert_array_equal(weights["blk.0.attn_qkv.weight"], values / np.float32(4))
    np.testing.assert_array_equal(weights["output.weight"], values)  # ncall 0: used as stored


def test_legacy_dat_without_trailer(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    path.write_bytes(_legacy_bytes([("blk.0.ffn_up.weight", 2, np.ones(8, dtype=np.float32))]))
    loaded = read_imatrix(path)
    assert (loaded.chunk_count, loaded.datasets, loaded.entries_count) == (0, (), 1)


def _valid_gguf_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.gguf"
    write_imatrix(path, _sample())
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        "empty",
        "random",
        "gguf-truncated-header",
        "gguf-truncated-data",
        "legacy-truncated",
        "legacy-zero-entries",
        "legacy-negative-name-length",
        "legacy-no-values",
    ],
)
def test_damaged_imatrix_files_are_clear_errors(tmp_path: Path, damage: str) -> None:
    good_gguf = _valid_gguf_bytes(tmp_path)
    good_legacy = _legacy_bytes([("blk.0.ffn_up.weight", 2, np.ones(8, dtype=np.float32))])
    content = {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes(),
        "gguf-truncated-header": good_gguf[:100],
        "gguf-truncated-data": good_gguf[:-40],
        "legacy-truncated": good_legacy[:-5],
        "legacy-zero-entries": struct.pack("<i", 0),
        "legacy-negative-name-length": struct.pack("<ii", 1, -5),
        "legacy-no-values": struct.pack("<ii", 1, 1) + b"x" + struct.pack("<ii", 1, 0),
    }[damage]
    path = tmp_path / "damaged.imatrix"
    path.write_bytes(content)
    with pytest.raises(PhiquantError) as error:
        read_imatrix(path)
    assert error.value.path == str(path)


def _write_gguf_with(tmp_path: Path, tensors: dict[str, np.ndarray], keys: bool = True) -> Path:
    path = tmp_path / "custom.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    if keys:
        writer.add_array("imatrix.datasets", ["d"])
        writer.add_uint32("imatrix.chunk_count", 1)
        writer.add_uint32("imatrix.chunk_size", 1)
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_imatrix_structure_errors(tmp_path: Path) -> None:
    sums, counts = np.ones((1, 32), dtype=np.float32), np.ones((1, 1), dtype=np.float32)
    with pytest.raises(PhiquantError, match="missing imatrix.datasets"):
        read_imatrix(_write_gguf_with(tmp_path, {"a.in_sum2": sums, "a.counts": counts}, keys=False))
    with pytest.raises(PhiquantError, match="no counts"):
        read_imatrix(_write_gguf_with(tmp_path, {"a.in_sum2": sums}))
    with pytest.raises(PhiquantError, match="must be F32"):
        read_imatrix(_write_gguf_with(tmp_path, {"a.in_sum2": sums.astype(np.float16), "a.counts": counts}))
    with pytest.raises(PhiquantError, match="no entries"):
        read_imatrix(_write_gguf_with(tmp_path, {"unrelated": sums}))


MODEL = [
    TensorDesc("blk.0.attn_qkv.weight", (256, 768), GGMLType.F32),
    TensorDesc("blk.0.ffn_up_exps.weight", (256, 512, 4), GGMLType.F32),
    TensorDesc("token_embd.weight", (256, 1000), GGMLType.F32),
]


def test_imatrix_weights_for_model_checks_names_lengths_and_values(tmp_path: Path) -> None:
    imatrix = _sample()
    weights = imatrix_weights_for_model(imatrix, MODEL)
    assert set(weights) == set(imatrix.entries) and weights["blk.0.ffn_up_exps.weight"].size == 1024

    def with_entry(name: str, values: np.ndarray) -> ImportanceMatrix:
        entries = dict(imatrix.entries, **{name: ImatrixEntry(values, np.array([1]))})
        return ImportanceMatrix(entries, path=tmp_path / "x.gguf")

    with pytest.raises(PhiquantError, match="ffn_down.weight matches no tensor.*another model") as error:
        imatrix_weights_for_model(with_entry("blk.7.ffn_down.weight", np.ones(256, np.float32)), MODEL)
    assert error.value.path == str(tmp_path / "x.gguf")
    with pytest.raises(PhiquantError, match="has 300 values but the tensor needs 256"):
        imatrix_weights_for_model(with_entry("blk.0.attn_qkv.weight", np.ones(300, np.float32)), MODEL)
    with pytest.raises(PhiquantError, match="NaN"):
        infinite = np.full(256, np.inf, np.float32)
        imatrix_weights_for_model(with_entry("blk.0.attn_qkv.weight", infinite), MODEL)
    # llama.cpp ignores a token_embd entry of the wrong length; so do we.
    dropped = imatrix_weights_for_model(with_entry("token_embd.weight", np.ones(5, np.float32)), MODEL)
    assert "token_embd.weight" not in dropped
