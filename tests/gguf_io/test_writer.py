"""The header writer packs a vocabulary's arrays in one call each, byte for byte as gguf-py packs them
item by item."""

from __future__ import annotations

import io

from gguf import GGUFValueType, GGUFWriter
from gguf.gguf_writer import WriterState

from phiquant.gguf_io.writer import serialise_header
from phiquant.model_source import Metadatum

TOKENS = ["<unk>", "<s>", "</s>", "<0x0A>", "▁the", "▁Über", "中文", "", "🙂"] * 50
METADATA = [
    Metadatum("general.name", "tiny", GGUFValueType.STRING),
    Metadatum("tokenizer.ggml.tokens", TOKENS, GGUFValueType.ARRAY, GGUFValueType.STRING),
    Metadatum("tokenizer.ggml.scores", [-float(i) / 3 for i in range(len(TOKENS))], GGUFValueType.ARRAY,
              GGUFValueType.FLOAT32),
    Metadatum("tokenizer.ggml.token_type", [i % 6 for i in range(len(TOKENS))], GGUFValueType.ARRAY,
              GGUFValueType.INT32),
    Metadatum("phi3.rope.scaling.factors", [1.0, 1.5, 2.25], GGUFValueType.ARRAY, GGUFValueType.FLOAT64),
    Metadatum("general.tags", [7, 8], GGUFValueType.ARRAY, GGUFValueType.UINT64),
    Metadatum("general.flags", [True, False], GGUFValueType.ARRAY, GGUFValueType.BOOL),
]  # fmt: skip


def _gguf_py_header() -> bytes:
    """The same header through gguf-py's own writer (its item-by-item packing)."""
    writer = GGUFWriter(None, "phi3")
    for item in METADATA:
        writer.add_key_value(item.key, item.value, item.value_type, item.sub_type)
    buffer = io.BytesIO()
    writer.fout = [buffer]  # type: ignore[list-item]
    writer.state = WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return buffer.getvalue()


def test_vocabulary_arrays_pack_as_gguf_py_packs_them() -> None:
    ours = serialise_header("phi3", METADATA, [])
    theirs = _gguf_py_header()
    assert ours[: len(theirs)] == theirs and not any(ours[len(theirs) :])
