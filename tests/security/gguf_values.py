"""Well-formed GGUF files with hostile values: every key phiquant reads, with any type and any value.

The mutation fuzzer breaks the layout; this one keeps the layout valid so that parsing succeeds
and the values reach the code that uses them (inspect, quantize planning, the runtime's memory
and prompt code).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gguf import GGUFValueType as T
from hypothesis import strategies as st

from phiquant.gguf_io.key_types import ARCH_KEYS, GENERAL_KEYS
from phiquant.gguf_io.reader import SCALAR_FORMATS, TYPE_SIZES
from tests.gguf_io.crafted import gguf_string

ARCHES = ("phi3", "llama", "phimoe", "[/bold]", "")
SCALAR_TYPES = tuple(SCALAR_FORMATS)
INT_RANGES = {
    T.UINT8: (0, 2**8 - 1),
    T.INT8: (-(2**7), 2**7 - 1),
    T.UINT16: (0, 2**16 - 1),
    T.INT16: (-(2**15), 2**15 - 1),
    T.UINT32: (0, 2**32 - 1),
    T.INT32: (-(2**31), 2**31 - 1),
    T.UINT64: (0, 2**64 - 1),
    T.INT64: (-(2**63), 2**63 - 1),
}
# Text a terminal or rich would interpret, and strings that look like the special tokens.
NASTY_TEXT = st.sampled_from(
    ["[/x]", "[bold red]", "\x1b[2J\x1b[31m", "<|end|>", "\n", "", "{{ 7*7 }}", "\u202e"]
)


@dataclass(frozen=True)
class Value:
    value_type: T
    value: object
    sub_type: T | None = None

    def encode(self) -> bytes:
        if self.value_type == T.ARRAY:
            assert isinstance(self.value, list) and self.sub_type is not None
            items = b"".join(Value(self.sub_type, item).encode_bare() for item in self.value)
            return struct.pack("<IIQ", T.ARRAY, self.sub_type, len(self.value)) + items
        return struct.pack("<I", self.value_type) + self.encode_bare()

    def encode_bare(self) -> bytes:
        if self.value_type == T.STRING:
            assert isinstance(self.value, str)
            return gguf_string(self.value.encode("utf-8"))
        return struct.pack(SCALAR_FORMATS[self.value_type], self.value)


def scalar_values(value_type: T) -> st.SearchStrategy[object]:
    if value_type in INT_RANGES:
        low, high = INT_RANGES[value_type]
        edges = [v for v in (low, high, 0, 1, 2, 512, 513) if low <= v <= high]
        return st.integers(low, high) | st.sampled_from(edges)
    if value_type == T.FLOAT32:
        return st.floats(width=32)
    if value_type == T.FLOAT64:
        return st.floats()
    if value_type == T.BOOL:
        return st.booleans()
    return st.text(max_size=24) | NASTY_TEXT


@st.composite
def values(draw: st.DrawFn, expected: tuple[tuple[T, ...], ...] | None) -> Value:
    """Mostly a value of an expected type (so the file parses), sometimes any type at all."""
    if expected and draw(st.integers(0, 3)):
        shape = draw(st.sampled_from(expected))
    else:
        kind = draw(st.sampled_from((*SCALAR_TYPES, T.STRING, T.ARRAY)))
        shape = (kind, draw(st.sampled_from((*SCALAR_TYPES, T.STRING)))) if kind == T.ARRAY else (kind,)
    if shape[0] == T.ARRAY:
        items = draw(st.lists(scalar_values(shape[1]), max_size=24))
        return Value(T.ARRAY, items, shape[1])
    return Value(shape[0], draw(scalar_values(shape[0])))


@st.composite
def hostile_metadata(draw: st.DrawFn) -> tuple[str, list[tuple[str, Value]]]:
    arch = draw(st.sampled_from(ARCHES))
    keys = draw(
        st.lists(
            st.sampled_from(list(GENERAL_KEYS) + [f"{arch}.{k}" for k in ARCH_KEYS]), unique=True, max_size=14
        )
    )
    keys = [k for k in keys if k != "general.architecture"]
    items = [("general.architecture", draw(values(GENERAL_KEYS["general.architecture"])))]
    for key in keys:
        expected = GENERAL_KEYS.get(key) or ARCH_KEYS.get(key.removeprefix(arch + "."))
        items.append((key, draw(values(expected))))
    if draw(st.booleans()):
        items[0] = ("general.architecture", Value(T.STRING, arch))
    return arch, items


@st.composite
def hostile_tensors(draw: st.DrawFn) -> list[tuple[str, tuple[int, ...], int]]:
    """Tensor infos with consistent sizes (so they parse) and any shapes and types."""
    names = draw(
        st.lists(
            st.sampled_from(
                [
                    "token_embd.weight",
                    "output.weight",
                    "output_norm.weight",
                    "blk.0.attn_qkv.weight",
                    "blk.0.ffn_down.weight",
                    "blk.0.attn_norm.weight",
                    "rope_factors_long.weight",
                    "x",
                ]
            ),
            unique=True,
            max_size=5,
        )
    )
    tensors = []
    for name in names:
        ggml_type = draw(st.sampled_from([0, 1, 30, 8, 2, 12, 14, 16, 20, 42]))
        block, _ = TYPE_SIZES[ggml_type]
        shape = (block * draw(st.integers(1, 4)),) + tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
        tensors.append((name, shape, ggml_type))
    return tensors


def build_gguf(
    items: list[tuple[str, Value]], tensors: list[tuple[str, tuple[int, ...], int]], data_byte: int
) -> bytes:
    kvs = b"".join(gguf_string(key.encode("utf-8")) + value.encode() for key, value in items)
    alignment = next(
        (
            int(v.value)
            for k, v in items
            if k == "general.alignment"
            and v.value_type == T.UINT32
            and isinstance(v.value, int)
            and v.value > 0
            and not v.value & (v.value - 1)
        ),
        32,
    )
    alignment = min(alignment, 4096)
    infos, offset, sizes = b"", 0, []
    for name, shape, ggml_type in tensors:
        block, type_size = TYPE_SIZES[ggml_type]
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        nbytes = n_elements // block * type_size
        infos += gguf_string(name.encode()) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", ggml_type, offset)
        sizes.append(nbytes)
        offset += -(-nbytes // alignment) * alignment
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(items)) + kvs + infos
    header += bytes(-len(header) % alignment)
    return header + bytes([data_byte]) * offset
