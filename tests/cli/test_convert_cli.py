"""`phiquant convert` on bad input: one readable line naming the file and the problem, exit code 2,
no traceback, and nothing left in the output directory."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phiquant import cli, temporary_files
from phiquant.gguf_io import writer as writer_module
from tests.cli.run import assert_one_line_error, cli_environment, run_phiquant
from tests.fixtures.broken_checkpoints import (
    contradict_config_shape,
    copy_checkpoint,
    corrupt_safetensors_header_json,
    inject_non_finite,
    point_index_at_missing_shard,
    remove_config,
    remove_tokenizer_files,
    set_safetensors_header_length_beyond_file,
    truncate_safetensors_file,
)


@pytest.fixture
def broken(phi3_mini_4k_checkpoint: Path, tmp_path: Path) -> Path:
    """A writable copy of the Phi-3-mini-4k fixture to break."""
    return copy_checkpoint(phi3_mini_4k_checkpoint, tmp_path / "broken")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def convert(source: Path, out_dir: Path, *extra: str):
    return run_phiquant("convert", source, "-o", out_dir / "model.gguf", "--outtype", "f16", *extra)


def assert_nothing_written(out_dir: Path) -> None:
    assert list(out_dir.iterdir()) == []


def test_successful_convert_prints_where_it_wrote(phi3_mini_4k_checkpoint, out_dir) -> None:
    result = convert(phi3_mini_4k_checkpoint, out_dir, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["path"]) == out_dir / "model.gguf" and report["outtype"] == "f16"
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]
    assert "sliding window" in result.stderr  # the known llama.cpp difference is said out loud


def test_missing_directory(tmp_path, out_dir) -> None:
    assert_one_line_error(convert(tmp_path / "nope", out_dir), str(tmp_path / "nope"), "no such file")
    assert_nothing_written(out_dir)


def test_missing_config_json(broken, out_dir) -> None:
    remove_config(broken)
    assert_one_line_error(convert(broken, out_dir), str(broken), "config.json")
    assert_nothing_written(out_dir)


def test_unknown_architecture_names_it_and_what_is_supported(broken, out_dir) -> None:
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    assert_one_line_error(convert(broken, out_dir), "LlamaForCausalLM", "Phi3ForCausalLM")
    assert_nothing_written(out_dir)


def test_phi3_small_is_refused_with_what_to_do_instead(broken, out_dir) -> None:
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["Phi3SmallForCausalLM"]}))
    assert_one_line_error(convert(broken, out_dir), "Phi3SmallForCausalLM", "block-sparse")
    assert_nothing_written(out_dir)


def test_missing_tokenizer_model(broken, out_dir) -> None:
    # tokenizer.json alone is enough (transformers 5 saves no tokenizer.model; tests/archs/
    # test_finetune_variants.py), so both must be gone for the SentencePiece vocabulary to be missing.
    remove_tokenizer_files(broken, ("tokenizer.model", "tokenizer.json"))
    assert_one_line_error(convert(broken, out_dir), "tokenizer.model")
    assert_nothing_written(out_dir)


def test_corrupt_safetensors_header(broken, out_dir) -> None:
    shard = corrupt_safetensors_header_json(broken)
    assert_one_line_error(convert(broken, out_dir), str(shard), "header")
    assert_nothing_written(out_dir)


def test_header_length_beyond_the_file(broken, out_dir) -> None:
    shard = set_safetensors_header_length_beyond_file(broken)
    assert_one_line_error(convert(broken, out_dir), str(shard))
    assert_nothing_written(out_dir)


def test_truncated_shard(broken, out_dir) -> None:
    shard = truncate_safetensors_file(broken)
    assert_one_line_error(convert(broken, out_dir), str(shard), "truncated")
    assert_nothing_written(out_dir)


def test_index_naming_a_missing_shard(broken, out_dir) -> None:
    index = point_index_at_missing_shard(broken)
    assert_one_line_error(convert(broken, out_dir), str(index), "missing")
    assert_nothing_written(out_dir)


def test_tensor_shape_contradicting_config(broken, out_dir) -> None:
    contradict_config_shape(broken)
    assert_one_line_error(convert(broken, out_dir), "shape", "config.json")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_unless_allowed(broken, out_dir, value) -> None:
    inject_non_finite(broken, value=value)
    assert_one_line_error(convert(broken, out_dir), "NaN or Inf", "--allow-nonfinite")
    assert_nothing_written(out_dir)
    allowed = convert(broken, out_dir, "--allow-nonfinite")
    assert allowed.returncode == 0, allowed.stderr


def test_output_directory_that_does_not_exist(phi3_mini_4k_checkpoint, tmp_path) -> None:
    target = tmp_path / "missing" / "m.gguf"
    assert_one_line_error(run_phiquant("convert", phi3_mini_4k_checkpoint, "-o", target), "does not exist")


def test_output_location_that_cannot_be_written(phi3_mini_4k_checkpoint) -> None:
    # /sys is read-only even for root, so this holds in CI containers too.
    assert_one_line_error(
        run_phiquant("convert", phi3_mini_4k_checkpoint, "-o", "/sys/m.gguf"), "/sys/m.gguf", "cannot write"
    )


def test_disk_too_small_is_refused_before_writing(
    phi3_mini_4k_checkpoint, out_dir, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(writer_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    code = cli.main(["convert", str(phi3_mini_4k_checkpoint), "-o", str(out_dir / "m.gguf"), "-q"])
    assert code == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert_nothing_written(out_dir)


def test_disk_full_during_writing_leaves_nothing(
    phi3_mini_4k_checkpoint, out_dir, monkeypatch, capsys
) -> None:
    real_open = open

    class FillsUp:
        def __init__(self, path, mode):
            self.file, self.written = real_open(path, mode), 0

        def write(self, data):
            self.written += len(data)
            if self.written > 5_000_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(temporary_files, "open", FillsUp, raising=False)  # where outputs are opened
    code = cli.main(["convert", str(phi3_mini_4k_checkpoint), "-o", str(out_dir / "m.gguf"), "-q"])
    assert code == 2
    assert "disk full" in capsys.readouterr().err
    assert_nothing_written(out_dir)


def test_unknown_outtype_is_a_usage_error(phi3_mini_4k_checkpoint, out_dir) -> None:
    result = run_phiquant("convert", phi3_mini_4k_checkpoint, "--outtype", "q4_k_m")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path) -> None:
    result = run_phiquant("convert", tmp_path / "nope", "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "PhiquantError" in result.stderr


def test_torch_is_not_imported_by_a_conversion(phi3_mini_4k_checkpoint, out_dir) -> None:
    code = (
        "import sys; from phiquant import api; "
        f"api.convert({str(phi3_mini_4k_checkpoint)!r}, {str(out_dir / 'm.gguf')!r}, 'f16'); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_environment()
    )
    assert result.returncode == 0, result.stderr
