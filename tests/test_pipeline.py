"""pipeline.py: slabs that finish out of order still land in file order, a NaN anywhere refuses the whole
write and leaves nothing behind, and the read-ahead hints."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from phiquant import pipeline
from phiquant.checkpoint import safetensors
from phiquant.checkpoint.read_ahead import read_ahead
from phiquant.errors import PhiquantError
from phiquant.ggml.types import GGMLType
from phiquant.model_source import ModelSource, SourceTensor
from phiquant.pipeline import OutputPlan, write_gguf_files

ROW_LENGTH = 64


def _rows(n_rows: int, first: int) -> np.ndarray:
    """Rows whose first value is their global row number, the rest deterministic noise."""
    values = np.random.default_rng(first).standard_normal((n_rows, ROW_LENGTH)).astype(np.float32)
    values[:, 0] = np.arange(first, first + n_rows)
    return values


def _source(arrays: dict[str, np.ndarray], hints: list[tuple[str, int, int]] | None = None) -> ModelSource:
    def tensor(name: str, values: np.ndarray) -> SourceTensor:
        def hint(start: int, stop: int) -> None:
            if hints is not None:
                hints.append((name, start, stop))

        return SourceTensor(
            name,
            (ROW_LENGTH, values.shape[0]),
            GGMLType.F32,
            lambda a, b: values[a:b].copy(),
            read_ahead=hint,
        )

    return ModelSource("phi3", [], [tensor(n, v) for n, v in arrays.items()], GGMLType.F32, "memory")


def _slow_early_slabs(rows: np.ndarray, ggml_type: int, importance: object, name: str) -> np.ndarray:
    """An encoder that takes longer for every other slab, so later slabs finish before earlier ones."""
    if int(rows[0, 0]) % 16 == 0:
        time.sleep(0.02)
    return rows.astype(np.float32).reshape(-1)


def _row_size(ggml_type: int, row_length: int) -> int:
    return 4 * row_length


@pytest.fixture
def eight_row_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "SLAB_BYTES", 4 * ROW_LENGTH * 8)


def test_slabs_finishing_out_of_order_are_written_in_file_order(
    tmp_path: Path, eight_row_slabs: None
) -> None:
    arrays = {
        "token_embd.weight": _rows(40, 0),
        "blk.0.attn_qkv.weight": _rows(96, 1000),
        "blk.1.ffn_down.weight": _rows(24, 2000),
    }
    plan = OutputPlan(tmp_path / "out.gguf", 0, dict.fromkeys(arrays, GGMLType.F32))

    write_gguf_files(_source(arrays), [plan], _slow_early_slabs, _row_size, threads=4)

    written = {t.name: np.array(t.data).reshape(-1, ROW_LENGTH) for t in GGUFReader(plan.path).tensors}
    assert written.keys() == arrays.keys()
    for name, values in arrays.items():
        np.testing.assert_array_equal(written[name], values, err_msg=name)


def test_every_slab_is_hinted_before_it_is_read(tmp_path: Path, eight_row_slabs: None) -> None:
    arrays = {"token_embd.weight": _rows(20, 0), "blk.0.ffn_up.weight": _rows(16, 100)}
    hints: list[tuple[str, int, int]] = []
    plan = OutputPlan(tmp_path / "out.gguf", 0, dict.fromkeys(arrays, GGMLType.F32))

    write_gguf_files(_source(arrays, hints), [plan], _slow_early_slabs, _row_size, threads=2)

    assert hints == [
        ("token_embd.weight", 0, 8), ("token_embd.weight", 8, 16), ("token_embd.weight", 16, 20),
        ("blk.0.ffn_up.weight", 0, 8), ("blk.0.ffn_up.weight", 8, 16),
    ]  # fmt: skip


def test_a_type_that_several_outputs_share_is_encoded_once_per_slab(
    tmp_path: Path, eight_row_slabs: None
) -> None:
    arrays = {"token_embd.weight": _rows(16, 0), "blk.0.ffn_up.weight": _rows(8, 100)}
    calls: list[tuple[str, int, int]] = []

    def as_type(rows: np.ndarray, ggml_type: int, importance: object, name: str) -> np.ndarray:
        calls.append((name, int(rows[0, 0]), ggml_type))
        return (rows + (0 if ggml_type == GGMLType.F32 else 0.5)).astype(np.float32).reshape(-1)

    # The embedding at one type in all three files, the layer at two; two four-byte types, so that
    # GGUFReader hands back every byte written for either.
    mixes = [
        {"token_embd.weight": GGMLType.F32, "blk.0.ffn_up.weight": GGMLType.F32},
        {"token_embd.weight": GGMLType.F32, "blk.0.ffn_up.weight": GGMLType.I32},
        {"token_embd.weight": GGMLType.F32, "blk.0.ffn_up.weight": GGMLType.I32},
    ]
    plans = [OutputPlan(tmp_path / f"out-{k}.gguf", 0, mix) for k, mix in enumerate(mixes)]

    write_gguf_files(_source(arrays), plans, as_type, _row_size, threads=2)

    assert sorted(calls) == [
        ("blk.0.ffn_up.weight", 100, GGMLType.F32), ("blk.0.ffn_up.weight", 100, GGMLType.I32),
        ("token_embd.weight", 0, GGMLType.F32), ("token_embd.weight", 8, GGMLType.F32),
    ]  # fmt: skip
    for plan, mix in zip(plans, mixes, strict=True):
        written = {t.name: t.data.tobytes() for t in GGUFReader(plan.path).tensors}
        for name, values in arrays.items():
            shift = 0 if mix[name] == GGMLType.F32 else 0.5
            assert written[name] == (values + shift).astype(np.float32).tobytes(), (plan.path.name, name)


def test_a_nan_in_a_late_slab_refuses_the_write_and_leaves_no_file(
    tmp_path: Path, eight_row_slabs: None
) -> None:
    broken = _rows(64, 0)
    broken[57, 3] = np.nan
    arrays = {"token_embd.weight": _rows(32, 500), "blk.3.ffn_down.weight": broken}
    plans = [OutputPlan(tmp_path / f"out-{k}.gguf", 0, dict.fromkeys(arrays, GGMLType.F32)) for k in range(2)]

    with pytest.raises(PhiquantError, match=r"tensor blk\.3\.ffn_down\.weight holds NaN or Inf"):
        write_gguf_files(_source(arrays), plans, _slow_early_slabs, _row_size, threads=3)
    assert list(tmp_path.iterdir()) == []


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {}
    offset = 0
    for name, values in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(values.shape),
            "data_offsets": [offset, offset + values.nbytes],
        }
        offset += values.nbytes
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for values in tensors.values():
            f.write(values.tobytes())


def test_safetensors_rows_are_hinted_by_their_exact_byte_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    first, second = _rows(10, 0), _rows(7, 50)
    _write_safetensors(path, {"a": first, "b": second})
    header_end = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    calls: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(safetensors, "read_ahead", lambda p, o, n: calls.append((p, o, n)))
    entries = {e.name: e for e in safetensors.read_safetensors_header(path)}

    entries["b"].read_ahead(2, 5)
    entries["b"].read_ahead(4, 99)  # past the end: clipped to the tensor

    row_bytes = 4 * ROW_LENGTH
    start_of_b = header_end + first.nbytes
    assert calls == [
        (path, start_of_b + 2 * row_bytes, 3 * row_bytes),
        (path, start_of_b + 4 * row_bytes, 3 * row_bytes),
    ]
    # and the bytes at that range are the rows the read returns
    data = path.read_bytes()[calls[0][1] : calls[0][1] + calls[0][2]]
    np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(3, -1), entries["b"].read(2, 5))


def test_read_ahead_is_only_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 64)
    read_ahead(path, 0, 4096)
    read_ahead(path, 1 << 40, 10)  # beyond the end of the file
    read_ahead(tmp_path / "missing.bin", 0, 10)  # the read itself reports a missing file
    assert path.read_bytes() == bytes(range(256)) * 64
