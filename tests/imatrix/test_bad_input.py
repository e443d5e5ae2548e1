"""Bad input to `phiquant imatrix` and to quantizing with an imatrix: one line naming the problem, exit 2."""

from __future__ import annotations

from pathlib import Path

from phiquant.bundled import heldout_text_path
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi3_specs import PHI3_MINI_4K, PHI35_MINI


def test_empty_calibration_text_is_refused(converted_gguf, tmp_path: Path) -> None:
    text = tmp_path / "empty.txt"
    text.write_text("  \n")
    result = run_phiquant(
        "imatrix", str(converted_gguf(PHI35_MINI, "f32")), "--text", str(text), "-o", str(tmp_path / "i.gguf")
    )
    assert_one_line_error(result, "the calibration text is empty")
    assert not (tmp_path / "i.gguf").exists()


def test_too_short_calibration_text_says_how_many_tokens(converted_gguf, tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("Only a few words of calibration text.")
    result = run_phiquant(
        "imatrix",
        str(converted_gguf(PHI35_MINI, "f32")),
        "--text",
        str(text),
        "--ctx",
        "64",
        "-o",
        str(tmp_path / "i.gguf"),
    )
    assert_one_line_error(result, "one chunk needs 64")
    assert not (tmp_path / "i.gguf").exists()


def test_the_evaluation_text_is_refused_for_calibration(converted_gguf, tmp_path: Path) -> None:
    result = run_phiquant(
        "imatrix",
        str(converted_gguf(PHI35_MINI, "f32")),
        "--text",
        str(heldout_text_path()),
        "-o",
        str(tmp_path / "i.gguf"),
    )
    assert_one_line_error(result, "evaluation text")


def test_imatrix_of_another_model_is_refused_when_quantizing(converted_gguf, tmp_path: Path) -> None:
    """PHI3_MINI_4K has a 512-wide FFN, PHI35_MINI a 768-wide one: the ffn_down entries cannot fit."""
    other = tmp_path / "other.gguf"
    made = run_phiquant(
        "imatrix", str(converted_gguf(PHI3_MINI_4K, "f32")), "--ctx", "64", "--chunks", "1", "-o", str(other)
    )
    assert made.returncode == 0, made.stderr
    result = run_phiquant(
        "quantize",
        str(converted_gguf(PHI35_MINI, "f32")),
        "-t",
        "Q4_K_M",
        "--imatrix",
        str(other),
        "-o",
        str(tmp_path / "out"),
    )
    assert_one_line_error(result, "imatrix for another model?")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
