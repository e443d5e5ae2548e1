"""Hypothesis strategies that damage a valid file the way crafted files do: overwrite a field with a
boundary value (0, 2^32-1, 2^63, 2^64-1, the file size), flip bytes, cut, insert or delete."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

U64_EDGES = (0, 1, 7, 8, 31, 32, 33, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)
U32_EDGES = (0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 30, 31, 41, 42, 255, 2**31 - 1, 2**31, 2**32 - 1)
KINDS = ("u64", "u32", "byte", "truncate", "insert", "delete", "duplicate")


@dataclass(frozen=True)
class Mutation:
    kind: str
    pos: int
    value: int | bytes = 0


@dataclass(frozen=True)
class MutatedFile:
    """A seed file and the mutations applied to it; its repr (what hypothesis prints for a failing
    example) lists the mutations, not the whole file."""

    mutations: tuple[Mutation, ...]
    content: bytes

    def __repr__(self) -> str:
        return f"MutatedFile({list(self.mutations)!r}, {len(self.content)} bytes)"


def apply(data: bytearray, mutation: Mutation) -> None:
    pos, value = mutation.pos, mutation.value
    if mutation.kind == "u64":
        data[pos : pos + 8] = struct.pack("<Q", value)
    elif mutation.kind == "u32":
        data[pos : pos + 4] = struct.pack("<I", value)
    elif mutation.kind == "byte":
        data[pos] = int(value)
    elif mutation.kind == "truncate":
        del data[pos:]
    elif mutation.kind == "insert":
        assert isinstance(value, bytes)
        data[pos:pos] = value
    elif mutation.kind == "delete":
        del data[pos : pos + int(value)]
    else:  # repeat a stretch: duplicated keys, names and tensor infos
        data[pos:pos] = data[pos : pos + int(value)]


def _value(kind: str, seed_size: int) -> st.SearchStrategy[int | bytes]:
    if kind == "u64":
        near_size = st.integers(max(0, seed_size - 64), seed_size + 64)
        wrap = st.integers(2**64 - seed_size - 64, 2**64 - 1)  # offsets whose u64 sum wraps into the file
        return st.one_of(st.sampled_from(U64_EDGES), near_size, wrap, st.integers(0, 2**64 - 1))
    if kind == "u32":
        return st.sampled_from(U32_EDGES)
    if kind == "byte":
        return st.integers(0, 255)
    if kind == "insert":
        return st.binary(min_size=1, max_size=16)
    if kind == "delete":
        return st.integers(1, 16)
    if kind == "duplicate":
        return st.integers(1, 64)
    return st.just(0)


def mutated_bytes(seed: bytes, fields: Sequence[int] = ()) -> st.SearchStrategy[MutatedFile]:
    """`seed` with 1-4 mutations, most of them at the start of one of its `fields` (byte offsets
    of its counts, lengths and offsets), the others anywhere."""

    @st.composite
    def mutated(draw: st.DrawFn) -> MutatedFile:
        data = bytearray(seed)
        mutations = []
        for _ in range(draw(st.integers(1, 4))):
            if not data:
                break
            anywhere = st.integers(0, len(data) - 1)
            pos = min(draw(st.sampled_from(fields) | anywhere if fields else anywhere), len(data) - 1)
            kind = draw(st.sampled_from(KINDS))
            mutation = Mutation(kind, pos, draw(_value(kind, len(seed))))
            apply(data, mutation)
            mutations.append(mutation)
        return MutatedFile(tuple(mutations), bytes(data))

    return mutated()
