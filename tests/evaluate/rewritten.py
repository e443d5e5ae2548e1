"""Copies of a GGUF file with edited metadata, written with phiquant's own GGUF writer: how the tests
make "another model" (another vocabulary, another architecture) without another checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from phiquant.gguf_io import GGUFOutput, read_gguf
from phiquant.gguf_io.writer import Metadatum, TensorInfo


def rewrite_gguf(source: Path, destination: Path, edit: Callable[[Metadatum], Metadatum]) -> Path:
    gguf = read_gguf(source)
    metadata = [edit(item) for item in gguf.metadata]
    arch = next(m.value for m in metadata if m.key == "general.architecture")
    tensors = [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes) for t in gguf.tensors]
    with GGUFOutput(destination, arch, metadata, tensors) as output:
        for tensor in gguf.tensors:
            output.write(gguf.raw_bytes(tensor))
    return destination


def with_other_vocabulary(source: Path, destination: Path) -> Path:
    """The same model with one token's text changed (a different tokenizer as far as llama.cpp knows)."""

    def edit(item: Metadatum) -> Metadatum:
        if item.key != "tokenizer.ggml.tokens":
            return item
        tokens = list(item.value)
        tokens[1000] = tokens[1000] + "x"
        return dataclasses.replace(item, value=tokens)

    return rewrite_gguf(source, destination, edit)


def with_other_architecture(source: Path, destination: Path, arch: str = "phi2") -> Path:
    old = read_gguf(source).arch

    def edit(item: Metadatum) -> Metadatum:
        if item.key == "general.architecture":
            return dataclasses.replace(item, value=arch)
        if item.key.startswith(f"{old}."):
            return dataclasses.replace(item, key=arch + item.key[len(old) :])
        return item

    return rewrite_gguf(source, destination, edit)
