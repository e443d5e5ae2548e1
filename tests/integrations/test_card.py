"""`phiquant card` without an evaluation, from the command line: front matter, file table, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.gguf_fixtures import ConvertedGGUF
from tests.fixtures.phi3_specs import PHI35_MINI


def _front_matter(text: str) -> dict[str, object]:
    front, separator, _ = text.removeprefix("---\n").partition("\n---\n")
    assert text.startswith("---\n") and separator
    loaded = yaml.safe_load(front)
    assert isinstance(loaded, dict)
    return loaded


def test_card_of_files_without_a_report(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    for outtype in ("f16", "q8_0"):
        shutil.copyfile(
            converted_gguf(PHI35_MINI, outtype), folder / f"Phi-3.5-mini-instruct-{outtype.upper()}.gguf"
        )
    result = run_phiquant("card", folder, "--quantized-by", 'Jane "Q" Doe', "--tag", "phi-3.5")
    assert result.returncode == 0, result.stderr
    assert "base_model microsoft/Phi-3.5-mini-instruct is inferred" in result.stderr
    text = (folder / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == "microsoft/Phi-3.5-mini-instruct"
    assert meta["quantized_by"] == 'Jane "Q" Doe'
    assert meta["base_model_relation"] == "quantized"
    assert "phi-3.5" in meta["tags"]  # type: ignore[operator]
    for file in folder.glob("*.gguf"):
        assert f"| {file.name} |" in text
    assert "No evaluation in this folder" in text
    assert "phiquant convert microsoft/Phi-3.5-mini-instruct --outtype f16" in text
    assert "phiquant quantize microsoft/Phi-3.5-mini-instruct -t Q8_0 -o ." in text


def test_card_options_stdout_and_json(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copyfile(converted_gguf(PHI35_MINI, "q8_0"), folder / "m-Q8_0.gguf")
    printed = run_phiquant(
        "card", folder, "--stdout", "--base-model", "me/phi-mine", "--license", "apache-2.0"
    )
    assert printed.returncode == 0, printed.stderr
    meta = _front_matter(printed.stdout)
    assert (meta["base_model"], meta["license"]) == ("me/phi-mine", "apache-2.0")
    assert not (folder / "README.md").exists()
    as_json = run_phiquant("card", folder, "--json", "-o", tmp_path / "card.md")
    assert json.loads(as_json.stdout)["path"] == str(tmp_path / "card.md")


def test_card_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(run_phiquant("card", tmp_path), "no .gguf files")
    assert_one_line_error(run_phiquant("card", tmp_path / "missing"), "not a directory")
