"""Fuzzing the safetensors header parser: any header (hostile numbers, wrong types, deep nesting,
lying lengths, non-UTF-8) is read or refused with a PhiquantError, and every tensor it accepts
reads back as float32 rows of its shape without touching bytes outside its own range."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phiquant.checkpoint.safetensors import DTYPES, read_safetensors_header
from phiquant.errors import PhiquantError
from tests.security.fuzzing import accepts_or_refuses_cleanly, fuzz_settings
from tests.security.mutations import MutatedFile, mutated_bytes

INT_EDGES = (
    -1,
    0,
    1,
    2,
    3,
    4,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 8,
    10**30,
)
JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.sampled_from(INT_EDGES) | st.floats() | st.text(max_size=8)
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
DIMENSION = st.integers(0, 8) | st.sampled_from(INT_EDGES) | JSON_LEAVES


@st.composite
def tensor_spec(draw: st.DrawFn) -> object:
    if not draw(st.integers(0, 9)):
        return draw(ANY_JSON)
    spec: dict[str, object] = {
        "dtype": draw(st.sampled_from([*DTYPES, "I64", "U8", "BOOL", "F8_E4M3"]) | JSON_LEAVES),
        "shape": draw(st.lists(DIMENSION, max_size=5) | ANY_JSON),
        "data_offsets": draw(
            st.lists(st.integers(0, 96) | st.sampled_from(INT_EDGES), min_size=2, max_size=2) | ANY_JSON
        ),
    }
    for key in draw(st.sets(st.sampled_from(sorted(spec)))):
        del spec[key]  # some entries lack a field
    return spec


@st.composite
def safetensors_file(draw: st.DrawFn) -> bytes:
    header = draw(st.dictionaries(st.text(max_size=10), tensor_spec(), max_size=4) | ANY_JSON)
    if isinstance(header, dict) and draw(st.booleans()):
        header["__metadata__"] = draw(ANY_JSON)
    encoded = json.dumps(header).encode()
    encoded = draw(
        st.just(encoded)
        | st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n)  # deeper than Python's recursion limit
        | st.integers(4_000, 6_000).map(
            lambda n: b'{"w": {"shape": [' + b"9" * n + b"]}}"
        )  # past int digit limit
        | st.binary(max_size=32).map(lambda junk: encoded[: len(encoded) // 2] + junk)  # cut or non-UTF-8
    )
    length = draw(st.just(len(encoded)) | st.sampled_from([0, 1, 2**63, 2**64 - 1, len(encoded) + 1]))
    return struct.pack("<Q", length) + encoded + draw(st.binary(max_size=128))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-safetensors")


def read_every_tensor(path: Path) -> None:
    """Parse the header; read every tensor it accepts, whole and by rows."""
    entries = accepts_or_refuses_cleanly(lambda: read_safetensors_header(path))
    if isinstance(entries, PhiquantError):
        assert str(path) in str(entries)
        return
    size = path.stat().st_size
    for entry in entries:
        assert entry.data_start + entry.nbytes <= size
        rows = entry.read()
        assert rows.dtype == np.float32 and rows.size == entry.n_elements
        if rows.shape[0] > 1:
            np.testing.assert_array_equal(entry.read(1, 2), rows[1:2])


@fuzz_settings(max_examples=300)
@given(content=safetensors_file())
def test_any_safetensors_header_is_read_or_refused_cleanly(workdir: Path, content: bytes) -> None:
    path = workdir / "fuzzed.safetensors"
    path.write_bytes(content)
    read_every_tensor(path)


def seed_file() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
        "b": {"dtype": "F16", "shape": [3], "data_offsets": [64, 70]},
        "c": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [72, 104]},
    }
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + bytes(range(104))


SEED = seed_file()


@fuzz_settings(max_examples=200)
@given(mutated=mutated_bytes(SEED, fields=[0] + [i for i, c in enumerate(SEED) if chr(c).isdigit()]))
def test_mutated_safetensors_file_is_read_or_refused_cleanly(workdir: Path, mutated: MutatedFile) -> None:
    path = workdir / "mutated.safetensors"
    path.write_bytes(mutated.content)
    read_every_tensor(path)
