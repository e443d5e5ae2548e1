"""Ctrl-C and SIGTERM during a conversion leave no partial or temporary file behind."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.cli.run import start_phiquant
from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K

# A checkpoint big enough that writing F32 takes a few seconds (about 1 GB of output).
LARGE = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_key_value_heads=4,
    num_hidden_layers=12,
)


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory) -> Path:
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    return build_phi3_checkpoint(tmp_path_factory.mktemp("large") / "ckpt", PHI3_MEDIUM_4K, **LARGE)


def wait_for_partial_file(directory: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.name.endswith(".phiquant-partial") for p in directory.iterdir()):
            return
        time.sleep(0.02)
    raise AssertionError("the conversion never started writing")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_signal_during_convert_leaves_nothing(large_checkpoint, tmp_path, sent, exit_code) -> None:
    out = tmp_path / "out"
    out.mkdir()
    process = start_phiquant("convert", large_checkpoint, "-o", out / "big.gguf", "--outtype", "f32")
    wait_for_partial_file(out)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr and "partial output removed" in stderr
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def large_gguf(large_checkpoint, tmp_path_factory) -> Path:
    from phiquant import api

    return api.convert(large_checkpoint, tmp_path_factory.mktemp("gguf") / "large-f16.gguf", "f16").path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_signal_during_llama_cpp_evaluation_is_not_swallowed(large_gguf, tmp_path, sent, exit_code) -> None:
    """imatrix evaluates inside llama_decode, which calls back into Python for every graph node: a
    signal handled inside that callback used to be swallowed by ctypes, and the command finished."""
    out = tmp_path / "out"
    out.mkdir()
    process = start_phiquant("imatrix", large_gguf, "--chunks", "64", "-o", out / "m.imatrix.gguf")
    time.sleep(3)  # past start-up and model loading: into the evaluation (held signals act after a call)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert list(out.iterdir()) == []
