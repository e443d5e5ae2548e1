"""Hand-built GGUF bytes, for files the writer would never produce (malformed on purpose)."""

from __future__ import annotations

import struct


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv_u32(key: bytes, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def kv_string(key: bytes, value: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)


def tensor_info(name: bytes, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    dims = b"".join(struct.pack("<Q", d) for d in shape)
    return (
        gguf_string(name)
        + struct.pack("<I", len(shape))
        + dims
        + struct.pack("<I", ggml_type)
        + struct.pack("<Q", offset)
    )


def gguf_file(
    kvs: list[bytes],
    infos: list[bytes],
    data: bytes,
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    header = (
        b"GGUF"
        + struct.pack("<I", 3)
        + struct.pack("<Q", len(infos) if n_tensors is None else n_tensors)
        + struct.pack("<Q", len(kvs) if n_kv is None else n_kv)
        + b"".join(kvs)
        + b"".join(infos)
    )
    header += bytes(-len(header) % alignment)
    return header + data
