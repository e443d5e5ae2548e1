"""quantize --imatrix auto: an importance matrix over the bundled calibration text, computed once per model
and then taken from the cache, only when a chosen type uses one."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.imatrix.run import BUNDLED_DATASET
from phiquant.progress import RecordingReporter
from tests.fixtures.phi3_specs import PHI35_MINI


@pytest.mark.slow
def test_auto_imatrix_is_computed_once_then_cached(converted_gguf, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))
    source = converted_gguf(PHI35_MINI, "f32")
    first = RecordingReporter()
    made = api.quantize(source, "IQ2_XXS", tmp_path / "a", imatrix="auto", reporter=first)
    assert any("computing an importance matrix" in note for note in first.messages("note"))
    assert read_gguf(made.files[0].path).get("quantize.imatrix.dataset") == BUNDLED_DATASET
    second = RecordingReporter()
    again = api.quantize(source, "IQ2_XXS", tmp_path / "b", imatrix="auto", reporter=second)
    assert any("from the cache" in note for note in second.messages("note"))
    assert again.files[0].path.read_bytes() == made.files[0].path.read_bytes()


def test_auto_imatrix_is_skipped_for_types_that_ignore_it(
    converted_gguf, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))
    reporter = RecordingReporter()
    result = api.quantize(
        converted_gguf(PHI35_MINI, "f32"), "Q8_0", tmp_path, imatrix="auto", reporter=reporter, dry_run=True
    )
    assert any("none computed" in note for note in reporter.messages("note"))
    assert not (tmp_path / "cache" / "phiquant" / "imatrix").exists()
    assert result.files[0].type == "Q8_0"
