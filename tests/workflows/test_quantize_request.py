"""`quantize` requests: contradictory input refused when the request is made, one error naming the flag;
presets and a size budget exclusive by type; the plan made before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.workflows.quantize_request import (
    MaxSize,
    Overrides,
    Presets,
    QuantizeRequest,
    RunOptions,
    SourceOptions,
    TargetBpw,
)
from tests.fixtures.bundled_model import bundled_model_dir


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"types": ["Q4_K_M"], "max_size": 5_000_000}, "give no -t/--type"),
        ({"max_size": 5_000_000, "target_bpw": 4.0}, "--max-size or --target-bpw, not both"),
        ({"target_bpw": 4.0, "tensor_types": [("ffn", "Q8_0")]}, "--tensor-type"),
        ({"max_size": 5_000_000, "pure": True}, "--pure"),
        ({"types": []}, "give at least one quantization type"),
        ({"target_bpw": 0.0}, "--target-bpw must be between 0 and 32"),
        ({"max_size": 0}, "--max-size must be at least 1 byte"),
        ({"types": ["Q4_K_MM"]}, "Did you mean Q4_K_M"),
        ({"types": ["Q4_0"], "tensor_types": [("(", "Q8_0")]}, "--tensor-type pattern '('"),
        ({"types": ["Q4_0"], "tensor_types": [("ffn", "Q9_9")]}, "Q9_9"),
        ({"types": ["Q4_0"], "output_type": "Q9_9"}, "Q9_9"),
        ({"types": ["Q4_0"], "split_max_size": 10**9, "split_max_tensors": 4}, "--split-max-tensors"),
        ({"types": ["Q4_0"], "split_max_tensors": 0}, "--split-max-tensors must be at least 1"),
        ({"types": ["Q4_0"], "mmproj_type": "q4_0"}, "--mmproj-type"),
    ],
)
def test_contradictory_or_bad_options_are_refused_naming_the_flag(options, fragment) -> None:
    with pytest.raises(PhiquantError) as raised:
        QuantizeRequest.from_options(source="model", **options)
    message = str(raised.value)
    assert fragment in message and "\n" not in message


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="max_bytes"):
        QuantizeRequest.from_options(source="model", max_bytes=5)


def test_presets_carry_the_overrides_and_a_budget_has_none() -> None:
    presets = QuantizeRequest.from_options(source="m", types="Q4_K_M", tensor_types=[["ffn", "Q8_0"]])
    assert presets.make == Presets(("Q4_K_M",), Overrides(tensor_types=(("ffn", "Q8_0"),)))
    assert presets.budget is None and presets.overrides.tensor_types == (("ffn", "Q8_0"),)
    budget = QuantizeRequest.from_options(source="m", max_size=6_000_000)
    assert budget.make == MaxSize(6_000_000) and budget.overrides == Overrides()
    assert budget.budget is not None and budget.budget.max_bytes == 6_000_000
    by_bits = QuantizeRequest.from_options(source="m", target_bpw=4.5, types=())
    assert by_bits.make == TargetBpw(4.5) and by_bits.budget is not None and by_bits.budget.target_bpw == 4.5


def test_options_left_out_or_none_are_the_fields_defaults() -> None:
    made = QuantizeRequest.from_options(source="m", types=["Q8_0"], imatrix=None, threads=None, max_size=None)
    assert made == QuantizeRequest(SourceOptions("m"), Presets(("Q8_0",)), RunOptions())


def test_the_plan_is_made_without_writing_and_the_run_writes_what_it_planned(tmp_path: Path) -> None:
    out = tmp_path / "not-yet"
    request = QuantizeRequest(
        SourceOptions(bundled_model_dir()),
        Presets(("Q4_0", "Q8_0"), Overrides(output_type="Q8_0")),
        RunOptions(output_dir=out),
    )
    planned = api.plan_quantize(request)
    assert not out.exists()
    assert [p.path.name for p in planned.files] == [
        f"{planned.opened.name}-{t}.gguf" for t in ("Q4_0", "Q8_0")
    ]
    output = next(t for t in planned.files[0].plan.tensors if t.name == "output.weight")
    assert output.target_type.name == "Q8_0"
    result = api.run_quantize(request)
    assert [f.file_size for f in result.files] == [p.predicted_size for p in planned.files]
    assert [f.path.stat().st_size for f in result.files] == [p.predicted_size for p in planned.files]
