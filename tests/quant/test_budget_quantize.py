"""quantize --max-size / --target-bpw end to end on a fixture model: the file fits the budget, its
per-tensor types are the plan recorded in its metadata, and impossible budgets say what the minimum is."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.quant.types import GGMLType
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
