"""Our small GGUF reader and writer against gguf-py's reader and writer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tests.quant.synthetic import GQA4, MAIN, PHIMOE, SyntheticModel, write_model

from phiquant.errors import PhiquantError
from phiquant.quant.gguf_file import KeyValue, TensorToWrite, read_gguf_layout, read_tensor_bytes, write_gguf
from phiquant.quant.plan import model_facts_from_metadata
from phiquant.quant.types import GGMLType


def test_reader_agrees_with_gguf_py_on_a_model_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    data = write_model(MAIN, path)
    ours = read_gguf_layout(path)
    theirs = gguf.GGUFReader(path)
    assert list(ours.metadata) == [name for name in theirs.fields if not name.startswith("GGUF.")]
    assert ours.value("phi3.block_count") == 8 and ours.metadata["phi3.block_count"].value_type == 4
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for info, tensor in zip(ours.tensors, theirs.tensors, strict=True):
        assert info.shape == tuple(int(n) for n in tensor.shape)
        assert info.offset + ours.data_offset == tensor.data_offset
        assert read_tensor_bytes(ours, info).tobytes() == data[info.name].tobytes()


@pytest.mark.parametrize("model", [MAIN, GQA4, PHIMOE], ids=lambda model: model.label)
def test_model_facts_come_from_the_file_metadata(tmp_path: Path, model: SyntheticModel) -> None:
    path = tmp_path / "model.gguf"
    write_model(model, path)
    metadata = {key: entry.value for key, entry in read_gguf_layout(path).metadata.items()}
    assert model_facts_from_metadata(metadata) == model.facts


def test_writer_output_reads_back_with_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "written.gguf"
    values = np.arange(96, dtype=np.float32)
    write_gguf(path, {"a.string": KeyValue(8, "héllo"), "a.empty": KeyValue(9, [], 8),
                      "a.ints": KeyValue(9, [1, 2, 3], 5), "a.flag": KeyValue(7, True)},
               [TensorToWrite("t0", (32, 3), GGMLType.F32, values),
                TensorToWrite("t1", (3,), GGMLType.F32, values[:3])])
    reader = gguf.GGUFReader(path)
    assert reader.fields["a.string"].contents() == "héllo"
    assert reader.fields["a.ints"].contents() == [1, 2, 3]
    np.testing.assert_array_equal(np.asarray(reader.tensors[0].data).reshape(-1), values)
    assert read_gguf_layout(path).value("a.empty") == []


def test_truncated_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    write_model(MAIN, path)
    raw = path.read_bytes()
    damaged_files = {"cut-header": raw[:500], "cut-data": raw[:-1000], "bad-magic": b"GGML" + raw[4:]}
    for label, content in damaged_files.items():
        damaged = tmp_path / f"{label}.gguf"
        damaged.write_bytes(content)
        with pytest.raises(PhiquantError) as error:
            read_gguf_layout(damaged)
        assert error.value.path == str(damaged), label
    with pytest.raises(PhiquantError, match="cannot read"):
        read_gguf_layout(tmp_path / "missing.gguf")
