"""`phiquant merge` from the command line: the unsplit file, a JSON report, no progress in a pipe; a file
that is not split, a broken shard set or an output it may not replace is one line, exit 2, and nothing
is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from phiquant import api
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.gguf_fixtures import ConvertedGGUF, copy_shards
from tests.fixtures.phi3_specs import PHI3_MINI_4K, PHI35_MINI


def _listing(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_merge_writes_the_unsplit_file_and_reports_it_as_json(
    split_f16: list[Path], unsplit_f16: Path, tmp_path: Path
) -> None:
    result = run_phiquant("merge", split_f16[0], "-o", tmp_path / "m.gguf", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar in a pipe
    report = json.loads(result.stdout)
    assert report["path"] == str(tmp_path / "m.gguf")
    assert report["shards"] == [str(p) for p in split_f16]
    assert (report["n_tensors"], report["file_size"]) == (29, unsplit_f16.stat().st_size)
    assert (tmp_path / "m.gguf").read_bytes() == unsplit_f16.read_bytes()
    assert _listing(tmp_path).keys() == {"m.gguf"}


def test_merge_says_what_it_wrote_in_one_line(split_f16: list[Path], tmp_path: Path) -> None:
    result = run_phiquant("merge", split_f16[0], "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    merged = tmp_path / split_f16[0].name.replace("-00001-of-00003", "")
    assert result.stdout.startswith(f"wrote {merged} (") and "29 tensors) from 3 shards" in result.stdout
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


def test_a_file_that_is_not_split_is_refused(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    whole = converted_gguf(PHI35_MINI, "f16")
    assert_one_line_error(
        run_phiquant("merge", whole, "-o", tmp_path / "m.gguf"), str(whole), "not a split model"
    )
    assert _listing(tmp_path) == {}


def test_a_missing_shard_is_refused(split_f16: list[Path], tmp_path: Path) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    copies[1].unlink()
    before = _listing(copies[0].parent)
    assert_one_line_error(run_phiquant("merge", copies[0]), "shard 2 of 3 is missing", copies[1].name)
    assert _listing(copies[0].parent) == before


def test_a_shard_of_another_model_is_refused(
    split_f16: list[Path], converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    # Shard 2 of 3 of the Phi-3-mini-4k fixture (17 tensors, not 29), renamed into the set.
    other = api.quantize(converted_gguf(PHI3_MINI_4K, "f16"), ["F16"], tmp_path / "o", split_max_tensors=6)
    shutil.copyfile(other.files[0].shards[1], copies[1])
    before = _listing(copies[0].parent)
    assert_one_line_error(
        run_phiquant("merge", copies[0], "-o", tmp_path / "m.gguf"), "two different models", copies[1].name
    )
    assert _listing(copies[0].parent) == before and not (tmp_path / "m.gguf").exists()


def test_a_later_shard_given_first_is_refused(split_f16: list[Path], tmp_path: Path) -> None:
    assert_one_line_error(
        run_phiquant("merge", split_f16[1], "-o", tmp_path / "m.gguf"), "shard 2 of 3", split_f16[0].name
    )
    assert _listing(tmp_path) == {}


def test_an_existing_output_is_replaced_only_with_force(
    split_f16: list[Path], unsplit_f16: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"keep me")
    assert_one_line_error(
        run_phiquant("merge", split_f16[0], "-o", existing), str(existing), "already exists", "--force"
    )
    assert _listing(tmp_path) == {"m.gguf": b"keep me"}
    replaced = run_phiquant("merge", split_f16[0], "-o", existing, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert _listing(tmp_path) == {"m.gguf": unsplit_f16.read_bytes()}


def test_a_shard_is_never_the_output(split_f16: list[Path], tmp_path: Path) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    before = _listing(copies[0].parent)
    assert_one_line_error(
        run_phiquant("merge", copies[0], "-o", copies[2], "--force"), "one of the shards being merged"
    )
    assert _listing(copies[0].parent) == before


def test_an_output_folder_that_cannot_be_made_is_refused(split_f16: list[Path], tmp_path: Path) -> None:
    # A regular file where the output's folder should be: no one, root included, can write below it.
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    result = run_phiquant("merge", split_f16[0], "-o", blocker / "m.gguf")
    assert_one_line_error(result, str(blocker))
    assert blocker.read_text() == "a file, not a folder"
