"""Merging a split model's shards gives, byte for byte, the file phiquant writes unsplit for the same
input (convert F16 and a quantize ladder, split by size and by tensor count; shards made by gguf-py with
llama-gguf-split's rules too), copied through a small buffer, and llama.cpp loads the merged file alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phiquant import api
from phiquant.gguf_io import merge as merge_module
from phiquant.gguf_io import read_gguf
from phiquant.progress import RecordingReporter
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.gguf_fixtures import ConvertedGGUF
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.gguf_io.split_reference import split_with_gguf_py
from tests.oracles import llama_cpp_logits

LADDER = ["Q4_K_M", "Q8_0"]
# The F16 fixture's largest tensor is 16.4 MB; Q8_0 makes it 8.7 MB.
CONVERT_SPLITS = [
    pytest.param({"split_max_size": "20M"}, id="by-size"),
    pytest.param({"split_max_tensors": 10}, id="by-tensor-count"),
]
LADDER_SPLITS = [
    pytest.param({"split_max_size": "9M"}, id="by-size"),
    pytest.param({"split_max_tensors": 10}, id="by-tensor-count"),
]


@pytest.fixture(scope="module")
def unsplit_ladder(
    converted_gguf: ConvertedGGUF, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    result = api.quantize(converted_gguf(PHI35_MINI, "f16"), LADDER, tmp_path_factory.mktemp("unsplit"))
    return {file.type: file.path for file in result.files}


@pytest.mark.parametrize("limit", CONVERT_SPLITS)
def test_merging_a_split_convert_gives_the_unsplit_f16_file(
    limit: dict[str, Any],
    shared_phi3_checkpoint: SharedCheckpoints,
    converted_gguf: ConvertedGGUF,
    tmp_path: Path,
) -> None:
    unsplit = converted_gguf(PHI35_MINI, "f16")
    split = api.convert(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model-f16.gguf", "f16", **limit)
    assert len(split.shards) == 3
    merged = api.merge(split.path, tmp_path / "merged.gguf")
    assert merged.shards == split.shards and merged.n_tensors == 29
    assert merged.file_size == unsplit.stat().st_size
    assert merged.path.read_bytes() == unsplit.read_bytes()


@pytest.mark.parametrize("limit", LADDER_SPLITS)
def test_merging_a_split_ladder_gives_each_unsplit_file(
    limit: dict[str, Any], unsplit_ladder: dict[str, Path], converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    result = api.quantize(converted_gguf(PHI35_MINI, "f16"), LADDER, tmp_path / "split", **limit)
    assert [file.type for file in result.files] == LADDER
    for file in result.files:
        assert len(file.shards) > 1
        merged = api.merge(file.path, tmp_path)  # a folder: the unsplit file's own name inside it
        assert merged.path == tmp_path / unsplit_ladder[file.type].name
        assert merged.path.read_bytes() == unsplit_ladder[file.type].read_bytes()


def test_merging_shards_split_by_gguf_py_gives_the_unsplit_file(
    converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    """Shards neither written nor planned by phiquant (llama-gguf-split's rules, gguf-py's writer)."""
    unsplit = converted_gguf(PHI35_MINI, "f16")
    shards = split_with_gguf_py(unsplit, tmp_path / "m", max_tensors=7)
    assert len(shards) == 5
    merged = api.merge(shards[0])
    assert merged.path == tmp_path / "m.gguf" and merged.shards == shards
    assert merged.path.read_bytes() == unsplit.read_bytes()


def test_a_single_shard_set_loses_its_split_keys(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    """llama-gguf-split writes m-00001-of-00001.gguf (split.count 1) when everything fits one shard."""
    unsplit = converted_gguf(PHI35_MINI, "f16")
    (single,) = split_with_gguf_py(unsplit, tmp_path / "m", max_tensors=1000)
    assert read_gguf(single).get("split.count") == 1
    assert api.merge(single).path.read_bytes() == unsplit.read_bytes()


def test_tensors_are_copied_through_a_bounded_buffer(
    split_f16: list[Path], unsplit_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer far smaller than any tensor, of an odd size, still gives the same bytes; progress counts
    every tensor byte, in steps no larger than the buffer."""
    chunk = 4096 + 7
    monkeypatch.setattr(merge_module, "COPY_CHUNK_BYTES", chunk)
    reporter = RecordingReporter()
    merged = api.merge(split_f16[0], tmp_path / "m.gguf", reporter=reporter)
    assert merged.path.read_bytes() == unsplit_f16.read_bytes()
    steps = [int(str(amount)) for event, amount in reporter.events if event == "advance"]
    assert max(steps) == chunk
    assert sum(steps) == sum(t.nbytes for t in read_gguf(unsplit_f16).tensors)
    assert reporter.events[0] == ("start", ("merging", sum(steps), "B"))


def test_llama_cpp_loads_the_merged_file_alone(
    split_f16: list[Path], converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    merged = api.merge(split_f16[0], tmp_path / "m.gguf").path  # no shard beside it
    assert read_gguf(merged).get("split.count") is None and not read_gguf(merged).is_split
    tokens = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]
    whole = llama_cpp_logits(converted_gguf(PHI35_MINI, "f16"), tokens, n_ctx=64)
    assert np.array_equal(llama_cpp_logits(merged, tokens, n_ctx=64), whole)
