"""quantize_rows: threads and chunking never change bytes (llama.cpp's file is the reference), experts get
their own imatrix slice, and inputs llama.cpp refuses are refused."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.quant.quantize import (
    MIN_CHUNK_VALUES,
    all_finite,
    check_source_data,
    plan_row_chunks,
    quantize_rows,
)
from phiquant.quant.types import GGMLType
from tests.quant.conftest import Oracle, reference_layout, reference_tensor_bytes
from tests.quant.synthetic import MAIN, PHIMOE


@pytest.mark.parametrize(
    ("experts", "rows", "n_per_row"), [(1, 768, 256), (4, 256, 256), (1, 3, 32768), (2, 100, 288)]
)
def test_row_chunks_cover_every_row_once_and_never_cross_an_expert(
    experts: int, rows: int, n_per_row: int
) -> None:
    chunks = plan_row_chunks(experts, rows, n_per_row)
    covered = [(c.expert, row) for c in chunks for row in range(c.first_row, c.first_row + c.n_rows)]
    assert covered == [(e, r) for e in range(experts) for r in range(rows)]
    assert all(c.first_row + c.n_rows <= rows for c in chunks)
    full = [c for c in chunks if c.first_row + c.n_rows < rows]
    assert all(c.n_rows * n_per_row >= MIN_CHUNK_VALUES for c in full)


@pytest.mark.slow
@pytest.mark.parametrize("n_threads", [1, 2, 5])
def test_thread_count_does_not_change_bytes(oracle: Oracle, n_threads: int) -> None:
    layout = reference_layout(oracle.one_preset_result(MAIN, "IQ4_XS", with_imatrix=True))
    name = "blk.3.attn_qkv.weight"
    rows, weights = oracle.model_data(MAIN)[name], oracle.imatrix(MAIN)[name]
    ours = quantize_rows(rows, GGMLType.IQ4_XS, weights, n_threads)
    assert ours.tobytes() == reference_tensor_bytes(layout, name)


@pytest.mark.slow
def test_each_expert_is_quantized_with_its_own_imatrix_slice(oracle: Oracle) -> None:
    layout = reference_layout(oracle.one_preset_result(PHIMOE, "IQ4_XS", with_imatrix=True))
    name = "blk.0.ffn_down_exps.weight"
    data, weights = oracle.model_data(PHIMOE)[name], oracle.imatrix(PHIMOE)[name]
    expected = reference_tensor_bytes(layout, name)
    assert quantize_rows(data, GGMLType.IQ4_XS, weights).tobytes() == expected
    n_per_row = data.shape[-1]
    per_expert = b"".join(
        quantize_rows(data[e], GGMLType.IQ4_XS, weights[e * n_per_row : (e + 1) * n_per_row]).tobytes()
        for e in range(data.shape[0])
    )
    assert per_expert == expected
    # With the first expert's slice used for all, the bytes would differ: the slices matter.
    first_slice = np.tile(weights[:n_per_row], data.shape[0])
    assert quantize_rows(data, GGMLType.IQ4_XS, first_slice).tobytes() != expected


def test_output_shape_keeps_leading_dimensions() -> None:
    rows = np.ones((3, 2, 64), dtype=np.float32)
    assert quantize_rows(rows, GGMLType.Q8_0).shape == (3, 2, 68)
    assert quantize_rows(rows[0], GGMLType.F16).shape == (2, 128)


@pytest.mark.parametrize(
    ("data", "imatrix", "message"),
    [
        (np.full((2, 64), np.nan, dtype=np.float32), None, "NaN or infinite"),
        (np.ones((2, 64), dtype=np.float64), None, "float32"),
        (np.ones(64, dtype=np.float32), None, "2-D rows or 3-D"),
        (np.ones((2, 64), dtype=np.float32), np.ones(32, dtype=np.float32), "needs 64 per expert"),
        (np.ones((2, 2, 64), dtype=np.float32), np.ones(64, dtype=np.float32), "x 2 expert"),
        (np.ones((2, 100), dtype=np.float32), None, "not a whole number of blocks"),
    ],
)
def test_bad_input_is_refused_before_ggml_sees_it(
    data: np.ndarray, imatrix: np.ndarray | None, message: str
) -> None:
    with pytest.raises(PhiquantError, match=message):
        quantize_rows(data, GGMLType.Q8_0, imatrix)


def test_iq2_xxs_without_imatrix_is_refused_naming_the_tensor() -> None:
    with pytest.raises(PhiquantError, match="token_embd.weight: IQ2_XXS needs an importance matrix"):
        quantize_rows(np.ones((2, 256), dtype=np.float32), GGMLType.IQ2_XXS, tensor_name="token_embd.weight")


@pytest.mark.parametrize("ggml_type", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("special", [None, np.nan, np.inf, -np.inf], ids=["finite", "nan", "inf", "-inf"])
def test_source_check_agrees_with_ggml_validate_row_data(ggml_type: GGMLType, special: float | None) -> None:
    values = np.linspace(-3, 3, 64, dtype=np.float32)
    if special is not None:
        values[17] = special
    raw = ggml.quantize_chunk(ggml_type, values.reshape(1, -1)) if ggml_type != GGMLType.F32 else values
    ggml_says_valid = ggml.validate_row_data(ggml_type, raw.reshape(-1).view(np.uint8))
    assert ggml_says_valid == (special is None)
    if ggml_says_valid:
        check_source_data(ggml_type, raw, "t")
    else:
        with pytest.raises(PhiquantError, match="t: the source data is invalid"):
            check_source_data(ggml_type, raw, "t")


def test_source_check_uses_ggml_for_quantized_blocks() -> None:
    packed = ggml.quantize_chunk(GGMLType.Q8_0, np.ones((1, 32), dtype=np.float32)).reshape(-1)
    check_source_data(GGMLType.Q8_0, packed, "t")
    packed[0:2] = np.frombuffer(np.float16(np.inf).tobytes(), dtype=np.uint8)
    with pytest.raises(PhiquantError, match="malformed Q8_0"):
        check_source_data(GGMLType.Q8_0, packed, "t")


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0, 3.5], True),
        ([3e38, 3e38, 3e38], True),  # the sum overflows; the element-wise check settles it
        ([1.0, np.inf], False),
        ([-np.inf, 2.0], False),
        ([np.inf, -np.inf], False),
        ([0.0, np.nan], False),
        ([3e38, 3e38, np.nan], False),
    ],
)
def test_all_finite(values: list[float], finite: bool) -> None:
    assert all_finite(np.array([values], dtype=np.float32)) is finite
