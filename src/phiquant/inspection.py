"""What a GGUF file holds, summarised for people (`phiquant inspect`) and scripts (`--json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, LlamaFileType

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.gguf_io.mmproj_writer import MMPROJ_ARCH, find_mmproj
from phiquant.vocab.special import EOG_IDS_KEY

# Types and file types newer than the PyPI gguf package's enums (ggml.h, llama.h).
EXTRA_TYPE_NAMES = {42: "Q2_0"}
EXTRA_FILE_TYPE_NAMES = {41: "Q2_0"}

# A vision projector's (GGUF arch `clip`) figures, shown in place of a language model's hyper-parameters.
PROJECTOR_KEYS = (
    "projector_type",
    "vision.projection_dim",
    "vision.image_size",
    "vision.patch_size",
    "vision.embedding_length",
    "vision.block_count",
    "vision.attention.head_count",
    "vision.image_min_pixels",
    "vision.image_max_pixels",
)
HYPERPARAMETER_SUFFIXES = (
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "block_count",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.sliding_window",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    "expert_count",
    "expert_used_count",
)


@dataclass
class TypeUsage:
    type: str
    n_tensors: int
    n_elements: int
    nbytes: int


@dataclass
class EndToken:
    id: int
    text: str
    roles: list[str]


@dataclass
class GGUFReport:
    path: str
    file_size: int
    gguf_version: int
    architecture: str
    name: str | None
    file_type: str | None
    n_tensors: int
    n_parameters: int
    tensor_bytes: int
    bits_per_weight: float
    types: list[TypeUsage]
    hyperparameters: dict[str, Any]
    tokenizer: dict[str, Any]
    end_of_generation: list[EndToken]
    has_chat_template: bool
    metadata_keys: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # every file of a split model, first first
    mmproj: str | None = None  # a language model's vision projector file beside it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ggml_type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return EXTRA_TYPE_NAMES.get(ggml_type, f"type{ggml_type}")


def file_type_name(file_type: int | None) -> str | None:
    if file_type is None:
        return None
    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return EXTRA_FILE_TYPE_NAMES.get(file_type, f"ftype{file_type}")


def type_usage(gguf: GGUFFile) -> list[TypeUsage]:
    usage: dict[int, TypeUsage] = {}
    for tensor in gguf.tensors:
        n_elements = 1
        for dim in tensor.shape:
            n_elements *= dim
        entry = usage.setdefault(tensor.ggml_type, TypeUsage(ggml_type_name(tensor.ggml_type), 0, 0, 0))
        entry.n_tensors += 1
        entry.n_elements += n_elements
        entry.nbytes += tensor.nbytes
    return sorted(usage.values(), key=lambda u: -u.nbytes)


def end_of_generation_tokens(gguf: GGUFFile) -> list[EndToken]:
    """The ids that stop generation: llama.cpp's eos/eot/eom slots, phiquant's full list, and the
    token texts llama.cpp treats as end-of-generation (llama-vocab.cpp)."""
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    roles: dict[int, list[str]] = {}
    for role in ("eos", "eot", "eom"):
        token_id = gguf.get(f"tokenizer.ggml.{role}_token_id")
        if isinstance(token_id, int):
            roles.setdefault(token_id, []).append(role)
    for token_id in gguf.get(EOG_IDS_KEY) or []:
        roles.setdefault(token_id, []).append("generation_config")
    for token_id, text in enumerate(tokens):
        if text in ("<|end|>", "<|endoftext|>", "<|im_end|>", "</s>"):
            roles.setdefault(token_id, []).append("llama.cpp text rule")
    return [
        EndToken(i, tokens[i] if 0 <= i < len(tokens) else "?", sorted(set(r)))
        for i, r in sorted(roles.items())
    ]


def inspect_gguf(path: Path) -> GGUFReport:
    gguf = read_gguf(path)
    arch = gguf.arch
    n_parameters = sum(u.n_elements for u in type_usage(gguf))
    tensor_bytes = sum(t.nbytes for t in gguf.tensors)
    hyperparameters = {
        suffix: gguf.get(f"{arch}.{suffix}")
        for suffix in (PROJECTOR_KEYS if arch == MMPROJ_ARCH else HYPERPARAMETER_SUFFIXES)
        if gguf.get(f"{arch}.{suffix}") is not None
    }
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    tokenizer = {
        "model": gguf.get("tokenizer.ggml.model"),
        "pre": gguf.get("tokenizer.ggml.pre"),
        "n_tokens": len(tokens),
        "bos_token_id": gguf.get("tokenizer.ggml.bos_token_id"),
        "add_bos_token": gguf.get("tokenizer.ggml.add_bos_token"),
    }
    return GGUFReport(
        path=str(path),
        file_size=gguf.file_size,
        shards=[str(shard) for shard in gguf.shards] if gguf.is_split else [],
        gguf_version=gguf.version,
        architecture=arch,
        name=gguf.get("general.name"),
        file_type=file_type_name(gguf.get("general.file_type")),
        n_tensors=len(gguf.tensors),
        n_parameters=n_parameters,
        tensor_bytes=tensor_bytes,
        bits_per_weight=8 * tensor_bytes / n_parameters if n_parameters else 0.0,
        types=type_usage(gguf),
        hyperparameters=hyperparameters,
        tokenizer=tokenizer,
        end_of_generation=end_of_generation_tokens(gguf),
        has_chat_template=gguf.get("tokenizer.chat_template") is not None,
        metadata_keys=[m.key for m in gguf.metadata],
        mmproj=_projector_beside(path) if arch != MMPROJ_ARCH else None,
    )


def _projector_beside(path: Path) -> str | None:
    try:
        found = find_mmproj(path)
    except PhiquantError as several:
        return several.message
    return str(found) if found else None
