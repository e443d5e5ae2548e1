"""The budget's calibration probes, evaluated in one sequential sweep: the reference's logits of each window
are computed once for every probe, and the plan fitted to the sweep's estimates is the plan a full
evaluation of every window gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.bundled import bundled_model_dir
from phiquant.cache import REFERENCE, sub_cache
from phiquant.evaluate import runner
from phiquant.quant.budget import parse_size
from phiquant.quant.plan import Decision, QuantOptions
from phiquant.quant.tensor_error import measure_tensors
from phiquant.workflows.budget import calibration
from phiquant.workflows.job import open_source, plan_files


def test_probes_share_one_computation_of_the_reference_per_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))  # the reference computed here, not read
    source = open_source(bundled_model_dir())
    (planned,) = plan_files(source, ["Q8_0"], [tmp_path / "unused.gguf"], [QuantOptions()])
    quantizable = {t.name for t in planned.plan.tensors if t.decision != Decision.NOT_QUANTIZABLE}
    tensors = measure_tensors([t for t in source.model.tensors if t.name in quantizable], {})
    probes = {
        k: v for k, v in calibration.calibration_probes(tensors).items() if k in ("base", "ffn_down", "blk.3")
    }
    reference = api.convert(bundled_model_dir(), tmp_path / "reference.gguf", "auto").path

    # Rows of reference logits turned into probabilities (evaluate/runner.py's rebuild), counted.
    rebuilt: list[int] = []
    original = runner.reference_rows

    def counted(logits: np.ndarray, targets: np.ndarray) -> runner.ReferenceRows:
        rebuilt.append(len(logits))
        return original(logits, targets)

    monkeypatch.setattr(runner, "reference_rows", counted)
    klds = calibration.probe_klds(source, None, tensors, probes, reference)

    # The reference store's record: the windows the reference model decoded, each once.
    (record,) = sub_cache(REFERENCE).glob("*.json")
    decoded = json.loads(record.read_text())["filled"]
    assert calibration.PROBE_MIN_WINDOWS <= len(decoded) <= calibration.PROBE_WINDOWS
    scored_per_window = calibration.PROBE_OPTIONS.ctx // 2 - 1
    # One rebuild per window for all three probes (evaluated one at a time, it was three per window).
    assert sum(rebuilt) == len(decoded) * scored_per_window
    assert set(klds) == set(probes) and 0 < klds["base"] < min(klds["ffn_down"], klds["blk.3"])


@pytest.mark.slow
def test_plan_from_the_sequential_probes_is_the_plan_from_every_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plan(full: bool) -> dict[str, str]:
        # A cache of its own for each, so the budget profile is measured, not read.
        monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / f"cache-{full}"))
        options = calibration.FULL_PROBE_OPTIONS if full else calibration.PROBE_OPTIONS
        monkeypatch.setattr(calibration, "PROBE_OPTIONS", options)
        result = api.quantize(
            bundled_model_dir(), [], tmp_path / f"out-{full}", max_size=parse_size("6MB"), dry_run=True
        )
        assert result.budget is not None
        return result.budget.types

    assert plan(full=False) == plan(full=True)
