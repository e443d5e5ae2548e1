"""`phiquant quantize` from the command line: output, JSON, and bad input."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from phiquant.imatrix.files import ImatrixEntry, ImportanceMatrix, write_imatrix
from tests.cli.run import assert_one_line_error, run_phiquant, start_phiquant
from tests.cli.test_interrupts import wait_for_partial_file
from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K, PHI35_MINI


def test_ladder_in_one_run_with_json_table(phi35_mini_checkpoint, tmp_path) -> None:
    result = run_phiquant(
        "quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "-t", "q8_0", "-o", tmp_path, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [f["type"] for f in report["files"]] == ["Q4_K_M", "Q8_0"]
    for file in report["files"]:
        assert Path(file["path"]).stat().st_size == file["file_size"]
        assert Path(file["path"]).name == f"Phi-3.5-mini-instruct-{file['type']}.gguf"
    assert 4.5 < report["files"][0]["bits_per_weight"] < report["files"][1]["bits_per_weight"]


def test_human_output_is_a_closing_table(phi35_mini_checkpoint, tmp_path) -> None:
    result = run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q6_K", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    for column in ("type", "file", "size", "bits/weight", "seconds", "Q6_K"):
        assert column in result.stdout


def test_dry_run_prints_the_plan_and_writes_nothing(phi35_mini_checkpoint, tmp_path) -> None:
    result = run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "-o", tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert (
        "blk.0.attn_qkv.weight" in result.stdout and "Q6_K" in result.stdout and "predicted" in result.stdout
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_type_lists_the_valid_ones_and_suggests_the_nearest(phi35_mini_checkpoint, tmp_path) -> None:
    result = run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q4_K_MM", "-o", tmp_path)
    assert_one_line_error(result, "Q4_K_MM", "Did you mean Q4_K_M", "IQ4_XS", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_imatrix_of_another_model_is_refused(phi35_mini_checkpoint, tmp_path) -> None:
    # entries named after the medium model's tensors have the medium model's row length (512)
    imatrix = tmp_path / "medium.imatrix.gguf"
    entries = {
        f"blk.{i}.attn_qkv.weight": ImatrixEntry(np.ones(512, np.float32), np.array([1])) for i in range(4)
    }
    write_imatrix(imatrix, ImportanceMatrix(entries, ("text",), 1, 512))
    out = tmp_path / "out"
    result = run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "-o", out, "--imatrix", imatrix)
    assert_one_line_error(result, str(imatrix), "blk.0.attn_qkv.weight")
    assert not out.exists() or list(out.iterdir()) == []


def test_imatrix_naming_tensors_the_model_lacks_is_refused(phi35_mini_checkpoint, tmp_path) -> None:
    imatrix = tmp_path / "other.imatrix.gguf"
    entries = {
        f"blk.{i}.attn_q.weight": ImatrixEntry(np.ones(256, np.float32), np.array([1])) for i in range(40)
    }
    write_imatrix(imatrix, ImportanceMatrix(entries, ("text",), 1, 512))
    result = run_phiquant(
        "quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "-o", tmp_path / "o", "--imatrix", imatrix
    )
    assert_one_line_error(result, str(imatrix))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_gguf_source(converted_gguf, tmp_path, damage) -> None:
    source = tmp_path / "Phi-3.5-mini-instruct-F32.gguf"
    shutil.copy(converted_gguf(PHI35_MINI, "f32"), source)
    data = source.read_bytes()
    source.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else data[:64] + b"\xff" * 4096 + data[4160:]
    )
    result = run_phiquant("quantize", source, "-t", "Q4_K_M", "-o", tmp_path / "out")
    assert_one_line_error(result, str(source))
    assert not (tmp_path / "out").exists()


def test_quantized_source_is_refused_unless_requantizing_is_allowed(converted_gguf, tmp_path) -> None:
    q8 = tmp_path / "m-Q8_0.gguf"
    ok = run_phiquant("quantize", converted_gguf(PHI35_MINI, "f32"), "-t", "Q8_0", "-o", tmp_path)
    assert ok.returncode == 0, ok.stderr
    next(tmp_path.glob("*Q8_0.gguf")).rename(q8)
    assert_one_line_error(
        run_phiquant("quantize", q8, "-t", "Q4_K_M", "-o", tmp_path / "o"),
        "already quantized",
        "--allow-requantize",
    )
    allowed = run_phiquant("quantize", q8, "-t", "Q4_K_M", "-o", tmp_path / "o", "--allow-requantize")
    assert allowed.returncode == 0, allowed.stderr
    assert "requantizing" in allowed.stderr


def test_output_directory_that_cannot_be_written(phi35_mini_checkpoint) -> None:
    assert_one_line_error(
        run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q8_0", "-o", "/sys/phiquant-out"),
        "/sys/phiquant-out",
    )


def test_bad_tensor_type_override(phi35_mini_checkpoint, tmp_path) -> None:
    assert_one_line_error(
        run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "--tensor-type", "ffn(=q4_0"),
        "regular expression",
    )
    assert_one_line_error(
        run_phiquant("quantize", phi35_mini_checkpoint, "-t", "Q4_K_M", "--tensor-type", "ffn=q9_9"), "q9_9"
    )


def test_fallback_is_an_error_naming_the_tensor_unless_allowed(make_phi3_checkpoint, tmp_path) -> None:
    # intermediate_size 320 is not a multiple of the 256-value k-quant block: ffn_down rows cannot be Q4_K
    checkpoint = make_phi3_checkpoint(PHI35_MINI, intermediate_size=320)
    refused = run_phiquant("quantize", checkpoint, "-t", "Q4_K_M", "-o", tmp_path / "a")
    assert_one_line_error(refused, "ffn_down", "--allow-fallback")
    allowed = run_phiquant(
        "quantize", checkpoint, "-t", "Q4_K_M", "-o", tmp_path / "b", "--allow-fallback", "--json"
    )
    assert allowed.returncode == 0, allowed.stderr
    fallbacks = json.loads(allowed.stdout)["files"][0]["fallbacks"]
    assert fallbacks and all("ffn_down" in f for f in fallbacks)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_interrupted_ladder_leaves_no_file(tmp_path, sent, exit_code) -> None:
    from tests.cli.test_interrupts import LARGE
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    checkpoint = build_phi3_checkpoint(tmp_path / "big" / "m", PHI3_MEDIUM_4K, **LARGE)
    out = tmp_path / "out"
    out.mkdir()
    process = start_phiquant("quantize", checkpoint, "-t", "Q8_0", "-t", "Q4_K_M", "-t", "Q6_K", "-o", out)
    wait_for_partial_file(out)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr and "partial output removed" in stderr
    assert list(out.iterdir()) == []


class FreeSpace:
    """shutil.disk_usage's answer for the output directory, as a test decides it."""

    def __init__(self, free: int):
        self.free = free

    def __call__(self, path: object) -> FreeSpace:
        return self


@pytest.mark.parametrize("types", [["Q8_0"], ["Q8_0", "Q4_K_M", "Q6_K"]], ids=["one", "ladder"])
def test_disk_too_small_for_the_output_is_refused_before_writing(
    phi35_mini_checkpoint, tmp_path, monkeypatch, capsys, types
) -> None:
    """Free space below the predicted size of the files: refused up front, naming the sizes, nothing
    written.  For a ladder the sum counts: each file alone fits, all of them do not."""
    from phiquant import api
    from phiquant.gguf_io import writer as writer_module

    planned = api.quantize(phi35_mini_checkpoint, types, tmp_path / "plan", dry_run=True).files
    sizes = [f.file_size for f in planned]
    free = max(sizes) + 1 if len(sizes) > 1 else sizes[0] - 1
    monkeypatch.setattr(writer_module.shutil, "disk_usage", FreeSpace(free))
    out = tmp_path / "out"
    out.mkdir()
    code = cli_main(
        "quantize", phi35_mini_checkpoint, *[a for t in types for a in ("-t", t)], "-o", out, "-q"
    )
    assert code == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    monkeypatch.setattr(writer_module.shutil, "disk_usage", FreeSpace(sum(sizes) + 4096))
    assert (
        cli_main("quantize", phi35_mini_checkpoint, *[a for t in types for a in ("-t", t)], "-o", out, "-q")
        == 0
    )
    assert sorted(p.stat().st_size for p in out.iterdir()) == sorted(sizes)


def cli_main(*argv: object) -> int:
    from phiquant import cli

    return cli.main([str(a) for a in argv])
