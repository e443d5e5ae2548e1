"""The ctypes binding: loading, the guards that keep ggml from aborting the process, and ggml's kernels
against gguf-py's independent numpy (de)quantizers."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import gguf
import gguf.quants
import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.ggml import library
from phiquant.quant.types import QUANTIZE_TARGETS, TYPE_INFO, GGMLType, TypeRole

REPO = Path(__file__).resolve().parents[2]


def _rows(n_rows: int = 8, n_per_row: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n_rows, n_per_row)).astype(np.float32)
    rows[0, :7] = 0.0  # exact zeros exercise the kernels' special cases
    return rows


def test_missing_library_is_a_clear_error_naming_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_spec = importlib.machinery.ModuleSpec("llama_cpp", None, is_package=True)
    fake_spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(library.importlib.util, "find_spec", lambda name: fake_spec)
    with pytest.raises(PhiquantError) as error:
        ggml._library.__wrapped__()
    assert str(tmp_path / "lib" / "libggml-base.so") in str(error.value)


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO / 'src'}", "PATH": "/usr/bin:/bin"},
    )


def test_ggml_really_aborts_without_an_imatrix_for_iq2_xxs() -> None:
    # Why the guards exist: the raw call kills the process (SIGABRT), no exception to catch.
    process = _run_python("""
        import numpy as np
        from phiquant.ggml import kernels as ggml
        rows = np.ones((1, 256), dtype=np.float32)
        out = np.zeros(66, dtype=np.uint8)
        ggml._library().ggml_quantize_chunk(16, rows.ctypes.data, out.ctypes.data, 0, 1, 256, None)
    """)
    assert process.returncode == -6


def test_inputs_ggml_would_abort_on_raise_phiquant_errors_instead() -> None:
    # In a child process, so that a guard that stops working fails this test instead of killing pytest.
    process = _run_python("""
        import numpy as np
        from phiquant.errors import PhiquantError
        from phiquant.ggml import kernels as ggml
        rows = np.ones((2, 256), dtype=np.float32)
        cases = {
            "iq2_xxs without imatrix": lambda: ggml.quantize_chunk(16, rows),
            "iq1_s without imatrix": lambda: ggml.quantize_chunk(19, rows),
            "rows not whole blocks": lambda: ggml.quantize_chunk(12, np.ones((2, 100), dtype=np.float32)),
            "q8_k target": lambda: ggml.quantize_chunk(15, rows),
            "removed type": lambda: ggml.quantize_chunk(4, rows),
            "i32 target": lambda: ggml.quantize_chunk(26, rows),
            "nan imatrix": lambda: ggml.quantize_chunk(16, rows, np.full(256, np.nan, dtype=np.float32)),
            "short imatrix": lambda: ggml.quantize_chunk(16, rows, np.ones(128, dtype=np.float32)),
            "float64 rows": lambda: ggml.quantize_chunk(8, rows.astype(np.float64)),
            "1-D rows": lambda: ggml.quantize_chunk(8, rows[0]),
            "dequantize wrong size": lambda: ggml.dequantize(8, np.zeros(33, dtype=np.uint8), 32),
        }
        for label, call in cases.items():
            try:
                call()
                print("NO ERROR", label)
            except PhiquantError:
                print("ok", label)
    """)
    assert process.returncode == 0, process.stderr
    assert "NO ERROR" not in process.stdout, process.stdout
    assert process.stdout.count("ok") == 11


@pytest.mark.parametrize(
    "ggml_type",
    [
        GGMLType.Q4_0,
        GGMLType.Q4_1,
        GGMLType.Q5_0,
        GGMLType.Q5_1,
        GGMLType.Q8_0,
        GGMLType.TQ1_0,
        GGMLType.TQ2_0,
        GGMLType.MXFP4,
        GGMLType.F16,
        GGMLType.BF16,
    ],
    ids=lambda t: t.name,
)
def test_quantize_chunk_equals_gguf_py_reference_quantizer(ggml_type: GGMLType) -> None:
    rows = _rows()
    expected = gguf.quants.quantize(rows, gguf.GGMLQuantizationType(ggml_type))
    assert ggml.quantize_chunk(ggml_type, rows).tobytes() == expected.tobytes()


_GGUF_PY_DECODES = [
    t
    for t in QUANTIZE_TARGETS
    if TYPE_INFO[t].role is TypeRole.QUANT
    and t.name in gguf.GGMLQuantizationType.__members__
    and t not in (GGMLType.Q1_0,)
]


@pytest.mark.slow
@pytest.mark.parametrize("ggml_type", _GGUF_PY_DECODES, ids=lambda t: t.name)
def test_dequantize_equals_gguf_py_reference_dequantizer(ggml_type: GGMLType) -> None:
    rows = _rows()
    weights = np.random.default_rng(1).uniform(0.1, 2.0, rows.shape[1]).astype(np.float32)
    packed = ggml.quantize_chunk(ggml_type, rows, weights)
    ours = ggml.dequantize(ggml_type, packed.reshape(-1), rows.size).reshape(rows.shape)
    expected = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType(ggml_type))
    np.testing.assert_array_equal(ours, expected)
    assert np.abs(ours - rows).mean() < np.abs(rows).mean(), "decoded values must beat all zeros"


@pytest.mark.parametrize("ggml_type", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_targets_round_trip(ggml_type: GGMLType) -> None:
    rows = _rows()
    packed = ggml.quantize_chunk(ggml_type, rows)
    decoded = ggml.dequantize(ggml_type, packed.reshape(-1), rows.size).reshape(rows.shape)
    tolerance = {GGMLType.F32: 0.0, GGMLType.F16: 1e-3, GGMLType.BF16: 1e-2}[ggml_type]
    np.testing.assert_allclose(decoded, rows, rtol=tolerance, atol=tolerance)


def test_validate_row_data_rejects_a_nan_scale() -> None:
    packed = ggml.quantize_chunk(GGMLType.Q8_0, _rows(1, 32))
    assert ggml.validate_row_data(GGMLType.Q8_0, packed)
    broken = packed.copy().reshape(-1)
    broken[0:2] = np.frombuffer(np.float16(np.nan).tobytes(), dtype=np.uint8)
    assert not ggml.validate_row_data(GGMLType.Q8_0, broken)
    assert not ggml.validate_row_data(GGMLType.Q8_0, broken[:-1])


def test_row_size_refuses_partial_blocks() -> None:
    assert ggml.row_size(GGMLType.Q4_K, 512) == 288
    with pytest.raises(PhiquantError, match="not a whole number of blocks"):
        ggml.row_size(GGMLType.Q4_K, 300)


def test_quantize_chunk_releases_the_gil_so_threads_can_share_the_work() -> None:
    # While one thread is inside ggml, Python code in another thread must keep running.
    rows = _rows(1024, 4096)
    ggml.quantize_init(GGMLType.Q4_K)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (ggml.quantize_chunk(GGMLType.Q4_K, rows), finished.set()))
    worker.start()
    iterations = 0
    while not finished.is_set():
        iterations += 1
    worker.join()
    assert iterations > 10_000


@pytest.mark.parametrize("ggml_type", [GGMLType.F16, GGMLType.BF16], ids=["F16", "BF16"])
def test_simd_float_conversion_gives_ggml_base_bytes(ggml_type) -> None:
    """quantize_chunk converts F16/BF16 with the CPU backend's SIMD routine; its bytes must equal
    ggml_quantize_chunk's portable conversion (what llama_model_quantize uses), edge values included."""
    rng = np.random.default_rng(11)
    values = (
        np.concatenate(
            [
                rng.normal(0, 0.03, 40960),
                rng.normal(0, 1e-6, 4096),
                rng.normal(0, 3e4, 4096),
                np.array(
                    [0.0, -0.0, 65504.0, 65519.9, 65520.0, -70000.0, 1e-8, 6.1e-5, 5.96e-8] + [0.0] * 55
                ),
            ]
        )
        .astype(np.float32)
        .reshape(-1, 64)
    )
    ours = ggml.quantize_chunk(ggml_type, values)
    lib = ggml._library()
    reference = np.empty_like(ours)
    written = lib.ggml_quantize_chunk(
        int(ggml_type), values.ctypes.data, reference.ctypes.data, 0, values.shape[0], values.shape[1], None
    )
    assert written == reference.nbytes and ggml._cpu_float_converters(), "SIMD converters not found"
    assert ours.tobytes() == reference.tobytes()
