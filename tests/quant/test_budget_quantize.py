"""quantize --max-size / --target-bpw end to end on a fixture model: the file fits the budget, its
per-tensor types are the plan recorded in its metadata, and impossible budgets say what the minimum is."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from phiquant import api
from phiquant.cache import BUDGET, CACHE_ENV, fingerprint, sub_cache
from phiquant.gguf_io import read_gguf
from phiquant.quant.budget_plan import PRESET_OF_TYPE
from phiquant.quant.plan import Decision, QuantOptions
from phiquant.quant.tensor_error import measure_tensors
from phiquant.quant.types import GGMLType
from phiquant.workflows.budget.calibration import fit_probes, profile_key, save_profile
from phiquant.workflows.job import open_source, plan_files
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi3_specs import PHI35_MINI


@pytest.fixture(scope="module")
def source_and_imatrix(converted_gguf, tmp_path_factory) -> tuple[Path, Path]:
    source = converted_gguf(PHI35_MINI, "f32")
    imatrix = api.imatrix(source, tmp_path_factory.mktemp("imatrix") / "imatrix.gguf", ctx=128, chunks=4)
    return source, imatrix.path


@pytest.mark.slow
def test_budgeted_file_fits_and_records_its_plan(source_and_imatrix, tmp_path: Path) -> None:
    source, imatrix = source_and_imatrix
    preset = api.quantize(source, "Q3_K_M", tmp_path / "preset", imatrix=imatrix).files[0]
    result = api.quantize(source, [], tmp_path / "budget", imatrix=imatrix, max_size=preset.file_size)
    (file,) = result.files
    assert file.file_size == file.path.stat().st_size <= preset.file_size
    assert result.budget is not None and result.budget.predicted_size == file.file_size
    layout = read_gguf(file.path)
    recorded = dict(item.split("=") for item in layout.get("phiquant.budget.tensor_types"))
    written = {t.name: GGMLType(t.ggml_type).name for t in layout.tensors if t.name in recorded}
    assert written == recorded == result.budget.types
    assert layout.get("phiquant.budget.predicted_kld") == pytest.approx(result.budget.predicted_kld, rel=1e-6)
    assert set(dict(i.split("=") for i in layout.get("phiquant.budget.sensitivities"))) >= {
        "attn_qkv",
        "ffn_down",
    }
    # one factor per layer of the fixture, fitted from the layer probes
    factors = [float(v) for v in layout.get("phiquant.budget.layer_factors")]
    assert len(factors) == len({t.name.split(".")[1] for t in layout.tensors if t.name.startswith("blk.")})
    assert all(v > 0 for v in factors) and factors == pytest.approx(
        list(result.budget.layer_factors.values()), rel=1e-3
    )
    # the budget equals Q3_K_M's size, so Q3_K_M is the anchor the plan is measured against
    anchor = layout.get("phiquant.budget.anchor")
    assert anchor.split(":")[0] == result.budget.anchor in {"free", "Q3_K_M"}


@pytest.mark.slow
def test_target_bpw_is_met_and_dry_run_writes_nothing(source_and_imatrix, tmp_path: Path) -> None:
    source, imatrix = source_and_imatrix
    result = api.quantize(source, [], tmp_path, imatrix=imatrix, target_bpw=4.0, dry_run=True)
    assert result.files[0].bits_per_weight <= 4.0
    assert not any(tmp_path.iterdir())
    rows = result.plans[next(iter(result.plans))]
    assert {row.why for row in rows if row.name in result.budget.types} == {"budget plan"}


def test_budget_under_the_smallest_file_names_the_minimum(source_and_imatrix, tmp_path: Path) -> None:
    source, imatrix = source_and_imatrix
    result = run_phiquant(
        "quantize", source, "--imatrix", imatrix, "--max-size", "100K", "-o", tmp_path, "--dry-run"
    )
    assert_one_line_error(result, "below the smallest file", "bytes")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["-t", "Q4_K_M", "--max-size", "5M"], "give no -t"),
        (["--max-size", "5M", "--tensor-type", "ffn=Q8_0"], "do not combine"),
        (["--target-bpw", "0"], "between 0 and 32"),
        (["--max-size", "lots"], "--max-size wants a size"),
    ],
)
def test_budget_arguments_that_cannot_work(converted_gguf, tmp_path: Path, arguments, fragment) -> None:
    result = run_phiquant("quantize", converted_gguf(PHI35_MINI, "f32"), *arguments, "-o", tmp_path)
    assert_one_line_error(result, fragment)


def seed_profile(source: Path, noisy_role: str, noisy_kld: float) -> None:
    """Write the budget profile `quantize` would measure for `source` (no imatrix), with `noisy_role`'s
    tensors given Q3_K..Q8_0 errors that all but coincide and its probe `noisy_kld` nats: the fit a
    probe moved by noise over a near-zero error change gives."""
    opened = open_source(source)
    (planned,) = plan_files(opened, ["Q8_0"], [Path("unused.gguf")], QuantOptions())
    quantizable = {t.name for t in planned.plan.tensors if t.decision != Decision.NOT_QUANTIZABLE}
    options = measure_tensors([t for t in opened.model.tensors if t.name in quantizable], {})
    options = [
        dataclasses.replace(
            t,
            options=tuple(
                dataclasses.replace(o, error=1e-3 + (0.5 if o.type == GGMLType.Q2_K else 1e-9 * (9 - i)))
                for i, o in enumerate(t.options)
            ),
        )
        if t.role == noisy_role
        else t
        for t in options
    ]
    measured = {"base": 0.01} | {role: 0.02 for role in {t.role for t in options}} | {noisy_role: noisy_kld}
    profile = sub_cache(BUDGET) / f"{profile_key(fingerprint(source), None)}.json"
    save_profile(profile, options, fit_probes(options, measured, layers=False))


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # the forged profile stays this test's
    return tmp_path


def test_an_implausible_fit_is_flagged_and_the_file_labelled_by_its_mix(
    converted_gguf, own_cache: Path
) -> None:
    source = converted_gguf(PHI35_MINI, "f32")
    seed_profile(source, "attn_qkv", 0.06)
    size = api.quantize(source, "Q4_K_M", own_cache, dry_run=True).files[0].file_size
    human = run_phiquant("quantize", source, "--max-size", size, "-o", own_cache / "out", "--dry-run")
    assert human.returncode == 0, human.stderr
    warnings = [line for line in human.stderr.splitlines() if line.startswith("warning:")]
    assert any("predicted mean KLD" in w and "calibration file measured (0.06 nats)" in w for w in warnings)
    assert "(implausible: see the warning)" in human.stdout
    result = run_phiquant(
        "quantize", source, "--max-size", size, "-o", own_cache / "out", "--dry-run", "--json"
    )
    assert result.returncode == 0, result.stderr
    budget = json.loads(result.stdout)["budget"]
    assert budget["predicted_kld"] > 100 * 0.06
    assert budget["fit_warning"] and budget["fit_warning"] in json.loads(result.stdout)["warnings"]
    # the label is the preset of the type holding most weights, and the file is planned as that preset
    shares = budget["mix"]
    assert max(shares, key=shares.get) == next(iter(shares))
    assert budget["label"] == PRESET_OF_TYPE[GGMLType[next(iter(shares))]]
    assert json.loads(result.stdout)["files"][0]["type"] == budget["label"]
    assert not (own_cache / "out").exists()


def test_a_fit_on_a_calibration_kld_that_is_not_a_number_is_refused(converted_gguf, own_cache: Path) -> None:
    source = converted_gguf(PHI35_MINI, "f32")
    seed_profile(source, "ffn_down", math.nan)
    result = run_phiquant("quantize", source, "--max-size", "50M", "-o", own_cache / "out", "--dry-run")
    assert_one_line_error(result, "cannot be trusted", "sensitivity of ffn_down nan", "-t")
