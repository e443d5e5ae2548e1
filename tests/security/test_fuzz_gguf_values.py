"""Fuzzing what phiquant does with the values in a well-formed GGUF: any key phiquant reads, with
any type and any value, through inspect, quantize and the runtime's header checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.security.fuzzing import fuzz_settings
from tests.security.gguf_commands import exercise_gguf_commands
from tests.security.gguf_values import build_gguf, hostile_metadata, hostile_tensors


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-gguf-values")


@fuzz_settings(max_examples=300)
@given(
    metadata=hostile_metadata(), tensors=hostile_tensors(), data_byte=st.sampled_from([0, 0x3C, 0x7F, 0xFF])
)
def test_hostile_metadata_values_are_used_or_refused_cleanly(
    workdir: Path, metadata, tensors, data_byte
) -> None:
    _, items = metadata
    path = workdir / "values.gguf"
    path.write_bytes(build_gguf(items, tensors, data_byte))
    exercise_gguf_commands(path, workdir / "out")
