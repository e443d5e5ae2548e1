"""Split models: phiquant's shards equal llama-gguf-split's (rules re-applied with gguf-py), every reader
takes the first shard, llama.cpp loads them with the unsplit file's logits, and broken sets are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.gguf_io.split import ordered_shard_sets, parse_split_size
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.gguf_fixtures import ConvertedGGUF, copy_shards
from tests.fixtures.phi3_specs import PHI3_MINI_4K, PHI35_MINI
from tests.gguf_io.split_reference import split_with_gguf_py
from tests.oracles import llama_cpp_logits

# The fixture's F16 file holds 40 MB of tensor data in 29 tensors; its largest tensor is 16.4 MB.
SIZE_LIMIT = 20_000_000


@pytest.mark.parametrize(
    ("limit", "expected_shards"), [({"max_bytes": SIZE_LIMIT}, 3), ({"max_tensors": 10}, 3)]
)
def test_shards_equal_those_made_by_llama_gguf_split_rules(
    limit: dict[str, int], expected_shards: int, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    unsplit = api.convert(checkpoint, tmp_path / "whole.gguf", "f16").path
    (tmp_path / "ours").mkdir()
    ours = api.convert(
        checkpoint,
        tmp_path / "ours" / "m.gguf",
        "f16",
        split_max_size=limit.get("max_bytes"),
        split_max_tensors=limit.get("max_tensors"),
    )
    expected = split_with_gguf_py(unsplit, tmp_path / "m", **limit)
    assert len(ours.shards) == len(expected) == expected_shards
    assert ours.path == ours.shards[0] and ours.path.name == "m-00001-of-00003.gguf"
    for mine, theirs in zip(ours.shards, expected, strict=True):
        assert mine.name == theirs.name
        assert mine.read_bytes() == theirs.read_bytes()
    assert ours.file_size == sum(p.stat().st_size for p in ours.shards)


def test_every_output_of_a_ladder_is_split(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    result = api.quantize(
        converted_gguf(PHI35_MINI, "f16"), ["Q8_0", "Q4_K_M"], tmp_path, split_max_tensors=10
    )
    for file in result.files:
        assert file.path.name.endswith("-00001-of-00003.gguf")
        assert len(file.shards) == 3 and all(p.is_file() for p in file.shards)
        whole = api.quantize(converted_gguf(PHI35_MINI, "f16"), [file.type], tmp_path / "whole").files[0].path
        joined = read_gguf(file.path)
        reference = read_gguf(whole)
        assert [m for m in joined.metadata if not m.key.startswith("split.")] == reference.metadata
        for a, b in zip(joined.tensors, reference.tensors, strict=True):
            assert (a.name, a.shape, a.ggml_type) == (b.name, b.shape, b.ggml_type)
            assert np.array_equal(joined.raw_bytes(a), reference.raw_bytes(b))


def test_a_model_that_fits_one_shard_is_one_plain_file(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    result = api.quantize(converted_gguf(PHI35_MINI, "f16"), ["Q4_0"], tmp_path, split_max_size="1G")
    assert result.files[0].shards == [] and result.files[0].path.name.endswith("-Q4_0.gguf")
    assert read_gguf(result.files[0].path).get("split.count") is None


@pytest.mark.parametrize("recorded_count", [0, 1])
def test_a_file_whose_split_count_is_0_or_1_is_a_whole_model(
    recorded_count: int, converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    """llama.cpp opens other shards only when split.count > 1; llama-gguf-split --merge writes 0."""
    whole = converted_gguf(PHI35_MINI, "f16")
    (single,) = split_with_gguf_py(whole, tmp_path / "m", max_tensors=1000, recorded_count=recorded_count)
    assert read_gguf(single).get("split.count") == recorded_count
    assert not read_gguf(single).is_split
    assert [t.name for t in read_gguf(single).tensors] == [t.name for t in read_gguf(whole).tensors]


def test_llama_cpp_loads_the_shards_with_the_unsplit_files_logits(
    split_f16: list[Path], converted_gguf: ConvertedGGUF
) -> None:
    tokens = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]
    whole = llama_cpp_logits(converted_gguf(PHI35_MINI, "f16"), tokens, n_ctx=64)
    split = llama_cpp_logits(split_f16[0], tokens, n_ctx=64)
    assert np.array_equal(whole, split)


def test_commands_read_a_split_model_from_its_first_shard(
    split_f16: list[Path], converted_gguf: ConvertedGGUF
) -> None:
    whole = api.inspect(converted_gguf(PHI35_MINI, "f16"))
    report = api.inspect(split_f16[0])
    assert report.shards == [str(p) for p in split_f16]
    assert (report.n_tensors, report.n_parameters, report.tensor_bytes) == (
        whole.n_tensors,
        whole.n_parameters,
        whole.tensor_bytes,
    )
    assert report.file_size == sum(p.stat().st_size for p in split_f16)


def test_the_listed_set_is_one_model(split_f16: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    assert ordered_shard_sets([*split_f16, other]) == [split_f16[0], other]
    with pytest.raises(Exception, match="out of order"):
        ordered_shard_sets([split_f16[0], split_f16[2], split_f16[1]])


def test_split_size_units() -> None:
    assert [parse_split_size(t) for t in ("48G", "500M", "100K", "123")] == [
        48 * 10**9,
        500 * 10**6,
        10**5,
        123,
    ]


def test_missing_shard(split_f16: list[Path], tmp_path: Path) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    copies[1].unlink()
    assert_one_line_error(run_phiquant("inspect", copies[0]), "shard 2 of 3 is missing", copies[1].name)


def test_shards_of_two_models(split_f16: list[Path], converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    # Shard 2 of 3 of another Phi model (the Phi-3-mini-4k fixture: 17 tensors, not 29), renamed into the set.
    other = api.quantize(converted_gguf(PHI3_MINI_4K, "f16"), ["F16"], tmp_path / "o", split_max_tensors=6)
    shutil.copyfile(other.files[0].shards[1], copies[1])
    assert_one_line_error(run_phiquant("inspect", copies[0]), "two different models", copies[1].name)
    # Shard 2 of the same model split differently: the same tensors twice.
    regrouped = api.quantize(split_f16[0], ["F16"], tmp_path / "r", split_max_tensors=10)
    shutil.copyfile(regrouped.files[0].shards[1], copies[1])
    assert_one_line_error(run_phiquant("inspect", copies[0]), "two different models")


def test_shard_of_a_split_with_another_count(
    split_f16: list[Path], converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    other = api.quantize(converted_gguf(PHI35_MINI, "f16"), ["F16"], tmp_path / "o", split_max_tensors=5)
    shutil.copyfile(other.files[0].shards[1], copies[1])  # shard 2 of a 6-shard split, renamed
    assert_one_line_error(run_phiquant("inspect", copies[0]), "split.count = 6", copies[1].name)


def test_wrong_split_count(split_f16: list[Path], tmp_path: Path) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    renamed = copies[0].with_name(copies[0].name.replace("-of-00003", "-of-00002"))
    copies[0].rename(renamed)
    assert_one_line_error(run_phiquant("inspect", renamed), "not named", "-00001-of-00003.gguf")


def test_a_shard_given_out_of_order(split_f16: list[Path]) -> None:
    assert_one_line_error(run_phiquant("inspect", split_f16[1]), "shard 2 of 3", split_f16[0].name)


def test_generate_and_eval_take_a_split_model(split_f16: list[Path], converted_gguf: ConvertedGGUF) -> None:
    whole = converted_gguf(PHI35_MINI, "f16")
    options = ("-p", "Hello", "--max-tokens", "4", "--temp", "0", "--json")
    from_shards = run_phiquant("generate", split_f16[0], *options)
    assert from_shards.returncode == 0, from_shards.stderr
    assert (
        json.loads(from_shards.stdout)["text"]
        == json.loads(run_phiquant("generate", whole, *options).stdout)["text"]
    )
    evaluated = run_phiquant(
        "eval", *split_f16, "--ctx", "32", "--chunks", "1", "--speed-runs", "0", "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    (file,) = json.loads(evaluated.stdout)["files"]
    assert Path(file["path"]) == split_f16[0]


def test_bad_split_options_are_one_line_errors(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    source = converted_gguf(PHI35_MINI, "f16")
    assert_one_line_error(
        run_phiquant("quantize", source, "-t", "Q8_0", "-o", tmp_path, "--split-max-size", "lots"), "500M"
    )
    assert_one_line_error(
        run_phiquant("quantize", source, "-t", "F16", "-o", tmp_path, "--split-max-size", "1M"),
        "smaller than the first tensor",
    )
    assert not list(tmp_path.iterdir())  # nothing written
