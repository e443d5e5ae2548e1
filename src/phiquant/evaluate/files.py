"""The GGUF files under evaluation: what each is, whether two are the same model, which is the reference.

Files of one model share the architecture, the vocabulary and every tensor's name and shape; only the
tensor types differ.  The reference defaults to the unquantized file of the model (F32, then BF16,
then F16: the most faithful copy first) among the files given or beside them in their directories.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phiquant.cache import fingerprint
from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.inspection import file_type_name, type_usage

UNQUANTIZED_FILE_TYPES = ("F32", "BF16", "F16")  # reference preference order


@dataclass(frozen=True)
class ModelFile:
    """One GGUF file's facts, read from its header."""

    path: Path
    gguf: GGUFFile
    file_type: str  # llama.cpp's file type name (Q4_K_M, F16, ...), or the dominant tensor type
    file_size: int
    n_parameters: int
    bits_per_weight: float
    identity: str  # digest of architecture, vocabulary and tensor shapes

    @property
    def label(self) -> str:
        return self.file_type

    @property
    def is_unquantized(self) -> bool:
        return self.file_type in UNQUANTIZED_FILE_TYPES


def describe(path: str | Path) -> ModelFile:
    gguf = read_gguf(path)
    usage = type_usage(gguf)
    n_parameters = sum(u.n_elements for u in usage)
    tensor_bytes = sum(u.nbytes for u in usage)
    if not gguf.tensors or n_parameters == 0:
        raise PhiquantError("this GGUF file holds no tensors; it is not a model", path=gguf.path)
    file_type = file_type_name(gguf.get("general.file_type")) or usage[0].type
    return ModelFile(
        path=gguf.path,
        gguf=gguf,
        file_type=file_type,
        file_size=gguf.file_size,
        n_parameters=n_parameters,
        bits_per_weight=8 * tensor_bytes / n_parameters,
        identity=model_identity(gguf),
    )


def _vocabulary(gguf: GGUFFile) -> list[str]:
    return list(gguf.get("tokenizer.ggml.tokens") or [])


def model_identity(gguf: GGUFFile) -> str:
    digest = hashlib.sha256(gguf.arch.encode())
    for token in _vocabulary(gguf):
        digest.update(token.encode("utf-8", "surrogatepass") + b"\0")
    for tensor in sorted(gguf.tensors, key=lambda t: t.name):
        digest.update(f"{tensor.name}:{tensor.shape};".encode())
    return digest.hexdigest()


def model_difference(reference: ModelFile, other: ModelFile) -> str | None:
    """Why `other` is not the same model as `reference` (None when it is)."""
    if reference.identity == other.identity:
        return None
    if reference.gguf.arch != other.gguf.arch:
        return f"architecture {other.gguf.arch}, not {reference.gguf.arch}"
    ours, theirs = _vocabulary(other.gguf), _vocabulary(reference.gguf)
    if ours != theirs:
        return f"a different vocabulary ({len(ours)} tokens vs {len(theirs)})"
    shapes = {t.name: t.shape for t in reference.gguf.tensors}
    for tensor in other.gguf.tensors:
        if shapes.get(tensor.name) != tensor.shape:
            return f"tensor {tensor.name} {tensor.shape} where the reference has {shapes.get(tensor.name)}"
    return "different tensors"


def require_same_model(reference: ModelFile, files: Sequence[ModelFile]) -> None:
    for file in files:
        difference = model_difference(reference, file)
        if difference is not None:
            raise PhiquantError(
                f"not the same model as the reference {reference.path.name}: {difference}", path=file.path
            )


def same_release(a: ModelFile, b: ModelFile) -> bool:
    """Same model and the same general.name: a base and an instruct model share every shape, so a
    reference found by looking around must also carry the same name (an explicit --ref need not)."""
    names = a.gguf.get("general.name"), b.gguf.get("general.name")
    return a.identity == b.identity and (None in names or names[0] == names[1])


def find_reference(files: Sequence[ModelFile]) -> ModelFile | None:
    """The unquantized file of the model among `files` or beside them, most faithful type first."""
    candidates = {file.path.resolve(): file for file in files if file.is_unquantized}
    for directory in {file.path.resolve().parent for file in files}:
        for path in sorted(directory.glob("*.gguf")):
            if path.resolve() in candidates or any(path.resolve() == f.path.resolve() for f in files):
                continue
            try:
                sibling = describe(path)
            except PhiquantError:
                continue  # an unrelated broken file next to the model is not the user's question
            if sibling.is_unquantized and same_release(sibling, files[0]):
                candidates[path.resolve()] = sibling
    ranked = sorted(
        (f for f in candidates.values() if same_release(f, files[0])),
        key=lambda f: (UNQUANTIZED_FILE_TYPES.index(f.file_type), str(f.path)),
    )
    return ranked[0] if ranked else None


def content_hash(gguf: GGUFFile) -> str:
    """The file's fingerprint (phiquant.cache) over its whole header (metadata, tensor names, shapes,
    types, offsets) and samples of every tensor's data, each shard of a split model in turn.
    Re-converting the same checkpoint gives the same hash; any real change to weights changes sampled
    bytes."""
    shard_prints = [
        fingerprint(
            shard,
            header_bytes=gguf.data_offset if shard == gguf.path else 0,
            regions=[(t.offset, t.nbytes) for t in gguf.tensors if gguf.file_of(t) == shard],
        )
        for shard in gguf.shards
    ]
    return (
        shard_prints[0]
        if len(shard_prints) == 1
        else hashlib.sha256("".join(shard_prints).encode()).hexdigest()[:32]
    )
