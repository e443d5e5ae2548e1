"""`phiquant eval`, `report`, `quantize --eval` and `demo` as a user runs them."""

from __future__ import annotations

import json
import shutil

import pytest

from phiquant import bundled
from phiquant.workflows.demo import run_demo
from tests.cli.run import run_phiquant


@pytest.mark.slow
def test_eval_json_lists_every_file_with_its_figures(ladder, eval_text) -> None:
    result = run_phiquant(
        "eval",
        ladder["Q4_K_M"],
        ladder["F16"],
        "--text",
        eval_text,
        "--chunks",
        "2",
        "--speed-runs",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["reference"] == str(ladder["F16"])
    assert [f["type"] for f in document["files"]] == ["Q4_K_M", "F16"]
    quantized = document["files"][0]
    assert quantized["divergence"]["kld_mean"] > 0 and quantized["bits_per_weight"] < 6
    assert quantized["speed"]["pp_tokens_per_second"] > 0 and quantized["speed"]["tg_tokens_per_second"] > 0
    assert document["n_scored_tokens"] == 2 * 255


@pytest.mark.slow
def test_report_on_a_directory_writes_markdown_json_and_png(ladder, eval_text, tmp_path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    for path in ladder.values():
        shutil.copy(path, directory / path.name)
    result = run_phiquant(
        "report", directory, "--text", eval_text, "--chunks", "2", "--speed-runs", "0", "--max-kld", "0.01"
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in directory.glob("*-report.*"))
    assert [name.rsplit(".", 1)[1] for name in written] == ["json", "md", "png"]
    document = json.loads(next(directory.glob("*-report.json")).read_text())
    assert document["recommended"].endswith(
        "-Q8_0.gguf"
    )  # the sharpened fixture loses more than 0.01 below Q8_0
    assert "recommendation:" in result.stdout


@pytest.mark.slow
def test_quantize_eval_reports_beside_the_files_with_a_temporary_reference(
    sharp_checkpoint, eval_text, tmp_path
) -> None:
    out = tmp_path / "q"
    result = run_phiquant(
        "quantize",
        sharp_checkpoint,
        "-t",
        "Q8_0",
        "-t",
        "Q4_K_M",
        "-o",
        out,
        "--eval",
        "--eval-text",
        eval_text,
        "--eval-chunks",
        "2",
        "--eval-speed-runs",
        "0",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    report = document["report"]
    assert [f["type"] for f in report["evaluation"]["files"]] == ["Q8_0", "Q4_K_M"]
    assert all(f["divergence"]["kld_mean"] > 0 for f in report["evaluation"]["files"])
    assert any("converted from" in note for note in report["evaluation"]["notes"])
    assert sorted(p.suffix for p in out.iterdir()) == [
        ".gguf",
        ".gguf",
        ".json",
        ".md",
        ".png",
    ]  # no reference left


@pytest.mark.slow
def test_demo_flow_on_a_stand_in_checkpoint(sharp_checkpoint, tmp_path, monkeypatch) -> None:
    """The demo's steps, with the fixture in place of the bundled model (the real demo is tested in
    tests/evaluate/test_bundled_model.py once the bundled model is installed)."""
    monkeypatch.setattr(bundled, "DEFAULT_MODEL_DIR", sharp_checkpoint)
    result = run_demo(tmp_path / "demo", chunks=2, speed_runs=1, max_tokens=8)
    types = [f.type for f in result.report.evaluation.files]
    assert types == ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
    assert result.report.plot_path.is_file() and result.report.markdown_path.is_file()
    assert result.answers[0].type == "F16" and result.answers[0].tokens > 0
