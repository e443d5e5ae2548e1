"""Fuzzing the --allow-pickle reader: a damaged torch.save zip (raw bytes anywhere, or the pickle
program inside it, with the zip's checksums made right again so the damage reaches the unpickler)
is read or refused with a PhiquantError, and nothing it names is ever called."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from phiquant.checkpoint.pytorch_pickle import read_pickle_weights
from phiquant.errors import PhiquantError
from tests.security.fuzzing import accepts_or_refuses_cleanly, fuzz_settings
from tests.security.mutations import MutatedFile, mutated_bytes


def seed_file() -> bytes:
    generator = torch.Generator().manual_seed(0)
    state = {
        "model.embed_tokens.weight": torch.randn(8, 16, generator=generator).to(torch.bfloat16),
        "model.norm.weight": torch.randn(16, generator=generator).to(torch.float16),
        "lm_head.weight": torch.randn(4, 16, generator=generator),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


SEED = seed_file()


def pickle_record(content: bytes) -> tuple[zipfile.ZipInfo, int]:
    """The zip entry holding the pickle program and where its bytes start in the file."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    name_length, extra_length = struct.unpack_from("<HH", content, info.header_offset + 26)
    return info, info.header_offset + 30 + name_length + extra_length


def with_fixed_checksum(content: bytearray, info: zipfile.ZipInfo, start: int) -> bytes:
    """Make the entry's CRC-32 (local header and central directory) match its damaged bytes."""
    crc = zlib.crc32(content[start : start + info.compress_size])
    struct.pack_into("<I", content, info.header_offset + 14, crc)
    central = content.find(b"PK\x01\x02" + bytes(content[info.header_offset + 4 : info.header_offset + 6]))
    while central != -1:
        name_length = struct.unpack_from("<H", content, central + 28)[0]
        if content[central + 46 : central + 46 + name_length] == info.filename.encode():
            struct.pack_into("<I", content, central + 16, crc)
            break
        central = content.find(b"PK\x01\x02", central + 4)
    return bytes(content)


@st.composite
def damaged_pickle_program(draw: st.DrawFn) -> bytes:
    """Same-length edits of the pickle program (opcodes, lengths, global names, storage keys)."""
    info, start = pickle_record(SEED)
    content = bytearray(SEED)
    positions = st.integers(start, start + info.compress_size - 1)
    for position, value in draw(st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=4)):
        content[position] = value
    return with_fixed_checksum(content, info, start)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-pickle")


def read_every_tensor(path: Path) -> str:
    entries = accepts_or_refuses_cleanly(lambda: read_pickle_weights(path))
    if isinstance(entries, PhiquantError):
        assert str(path) in str(entries)
        return f"refused: {entries.message[:40]}"
    for entry in entries:
        rows = entry.read()
        assert rows.size == entry.n_elements
    return "read"


def test_the_seed_reads_back() -> None:
    assert pickle_record(SEED)[0].compress_size > 0  # stored, not deflated: edits land in the program


def test_the_unharmed_seed_is_read(workdir: Path) -> None:
    path = workdir / "seed.bin"
    path.write_bytes(SEED)
    assert read_every_tensor(path) == "read"


@fuzz_settings(max_examples=200)
@given(program=damaged_pickle_program())
def test_damaged_pickle_program_is_read_or_refused_cleanly(workdir: Path, program: bytes) -> None:
    path = workdir / "program.bin"
    path.write_bytes(program)
    event(read_every_tensor(path))


@fuzz_settings(max_examples=150)
@given(mutated=mutated_bytes(SEED))
def test_damaged_pickle_zip_is_read_or_refused_cleanly(workdir: Path, mutated: MutatedFile) -> None:
    path = workdir / "zip.bin"
    path.write_bytes(mutated.content)
    event(read_every_tensor(path))
