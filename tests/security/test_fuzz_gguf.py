"""Fuzzing the GGUF reader and the commands that read GGUF files (inspect, quantize from GGUF).

Every input must be read or refused with a PhiquantError; a file the reader accepts must then
inspect and quantize without any other exception, and a quantized output must read back.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gguf_io.crafted import gguf_string
from tests.security.fuzzing import fuzz_settings
from tests.security.gguf_commands import exercise_gguf_commands
from tests.security.mutations import U32_EDGES, U64_EDGES, MutatedFile, mutated_bytes
from tests.security.seeds import gguf_field_offsets, tiny_phi3_gguf_bytes

SEED = tiny_phi3_gguf_bytes()


FIELDS = gguf_field_offsets(SEED)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-gguf")


@fuzz_settings(max_examples=300)
@given(mutated=mutated_bytes(SEED, FIELDS))
def test_mutated_gguf_is_read_or_refused_cleanly(workdir: Path, mutated: MutatedFile) -> None:
    path = workdir / "mutated.gguf"
    path.write_bytes(mutated.content)
    exercise_gguf_commands(path, workdir / "out")


VALUE_TYPES = st.sampled_from(U32_EDGES + tuple(range(13)))


@st.composite
def crafted_key_value(draw: st.DrawFn) -> bytes:
    key = draw(
        st.sampled_from(
            [
                b"general.architecture",
                b"general.alignment",
                b"general.name",
                b"phi3.block_count",
                b"tokenizer.ggml.tokens",
                b"tokenizer.ggml.eos_token_id",
                b"phiquant.eog_token_ids",
                b"tokenizer.chat_template",
                b"general.file_type",
            ]
        )
        | st.binary(max_size=12)
    )
    value_type = draw(VALUE_TYPES)
    body = struct.pack("<I", value_type)
    if value_type == 9:  # array: element type, count, then elements
        body += struct.pack("<IQ", draw(VALUE_TYPES), draw(st.sampled_from(U64_EDGES) | st.integers(0, 8)))
    body += draw(st.binary(max_size=48))
    return gguf_string(key) + body


@st.composite
def crafted_tensor_info(draw: st.DrawFn) -> bytes:
    name = draw(
        st.sampled_from([b"token_embd.weight", b"output.weight", b"blk.0.attn_qkv.weight"])
        | st.binary(max_size=8)
    )
    n_dims = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 2**32 - 1]))
    dims = b"".join(
        struct.pack("<Q", draw(st.sampled_from(U64_EDGES) | st.integers(0, 64)))
        for _ in range(min(n_dims, 5))
    )
    ggml_type = draw(st.sampled_from([0, 1, 8, 12, 30, 42, 77, 2**32 - 1]))
    offset = draw(st.sampled_from(U64_EDGES) | st.integers(0, 256))
    return gguf_string(name) + struct.pack("<I", n_dims) + dims + struct.pack("<IQ", ggml_type, offset)


@st.composite
def crafted_gguf(draw: st.DrawFn) -> bytes:
    """A GGUF built field by field from hostile values, with counts that may lie."""
    kvs = draw(st.lists(crafted_key_value(), max_size=4))
    infos = draw(st.lists(crafted_tensor_info(), max_size=3))
    n_kv = draw(st.just(len(kvs)) | st.sampled_from(U64_EDGES))
    n_tensors = draw(st.just(len(infos)) | st.sampled_from(U64_EDGES))
    version = draw(st.sampled_from([3, 3, 3, 2, 1, 2**32 - 1]))
    header = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    padding = bytes(draw(st.integers(0, 64)))
    return header + padding + draw(st.binary(max_size=512))


@fuzz_settings(max_examples=300)
@given(content=crafted_gguf())
def test_crafted_gguf_is_read_or_refused_cleanly(workdir: Path, content: bytes) -> None:
    path = workdir / "crafted.gguf"
    path.write_bytes(content)
    exercise_gguf_commands(path, workdir / "out")


@fuzz_settings(max_examples=100)
@given(content=st.binary(max_size=256) | st.binary(max_size=256).map(lambda b: b"GGUF" + b))
def test_random_bytes_are_read_or_refused_cleanly(workdir: Path, content: bytes) -> None:
    path = workdir / "random.gguf"
    path.write_bytes(content)
    exercise_gguf_commands(path, workdir / "out")
