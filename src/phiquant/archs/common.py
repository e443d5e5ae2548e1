"""What every Phi family module needs: config lookups, RoPE settings, general.* keys, tensor adapters.

Nothing here knows about a particular Phi family; quirks live in the family modules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from gguf import GGUFValueType

from phiquant.archs.config_schema import check_config_values, check_sizes_against_tensors
from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.tensor_entry import TensorEntry
from phiquant.errors import PhiquantError
from phiquant.ggml.types import GGMLType
from phiquant.model_source import Metadatum, ModelSource, SourceTensor
from phiquant.vocab.special import (
    AddedToken,
    SpecialTokens,
    chat_template,
    chat_template_metadata,
    eog_metadata,
    strip_flag_metadata,
)

# safetensors dtype -> the ggml type "auto" keeps (llama.cpp's converter keeps BF16 as BF16 and
# F16 as F16; F32 checkpoints stay F32).
STORED_GGML_TYPE = {"BF16": GGMLType.BF16, "F16": GGMLType.F16, "F32": GGMLType.F32, "F64": GGMLType.F32}


class HParams:
    """config.json with lookups that accept the aliases real checkpoints use."""

    def __init__(self, config: dict[str, Any], checkpoint: Checkpoint):
        self.config = config
        self.file = checkpoint.path / "config.json"
        check_config_values(config, self.file)
        check_sizes_against_tensors(
            config, {name: entry.shape for name, entry in checkpoint.tensors.items()}, self.file
        )

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            if self.config.get(name) is not None:
                return self.config[name]
        return default

    def require(self, *names: str) -> Any:
        value = self.get(*names)
        if value is None:
            raise PhiquantError(f"missing {' or '.join(names)}", path=self.file)
        return value

    def require_int(self, *names: str) -> int:
        value = self.require(*names)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PhiquantError(f"{names[0]} must be a positive integer, not {value!r}", path=self.file)
        return value


@dataclass(frozen=True)
class RopeSettings:
    """RoPE parameters, normalised across transformers 4.x (`rope_scaling` + top-level keys)
    and 5.x (`rope_parameters`) config formats."""

    theta: float
    partial_rotary_factor: float
    scaling_type: str | None  # "longrope" or None
    long_factor: tuple[float, ...] | None
    short_factor: tuple[float, ...] | None
    original_max_positions: int | None
    factor: float | None  # explicit scaling factor, when the config gives one
    attention_factor: float | None  # explicit attention factor (or PhiMoE's mscale), when given


def read_rope_settings(hp: HParams) -> RopeSettings:
    params = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise PhiquantError(f"rope_scaling must be an object, not {params!r}", path=hp.file)
    raw_type = params.get("rope_type") or params.get("type")
    scaling_type = _normalise_rope_type(raw_type, hp)
    long_factor, short_factor = params.get("long_factor"), params.get("short_factor")
    return RopeSettings(
        theta=float(params.get("rope_theta") or hp.get("rope_theta", default=10000.0)),
        partial_rotary_factor=float(
            params.get("partial_rotary_factor") or hp.get("partial_rotary_factor", default=1.0)
        ),
        scaling_type=scaling_type,
        long_factor=tuple(float(x) for x in long_factor) if long_factor else None,
        short_factor=tuple(float(x) for x in short_factor) if short_factor else None,
        original_max_positions=params.get("original_max_position_embeddings")
        or hp.get("original_max_position_embeddings"),
        factor=params.get("factor"),
        attention_factor=params.get("attention_factor"),
    )


def _normalise_rope_type(raw_type: Any, hp: HParams) -> str | None:
    if raw_type in (None, "default"):
        return None
    # "su" is the name of LongRoPE in the first Phi-3-128k release; transformers maps it to longrope.
    if str(raw_type).lower() in ("su", "longrope"):
        return "longrope"
    raise PhiquantError(
        f"rope scaling type {raw_type!r} is not one llama.cpp runs for Phi models (it supports longrope)",
        path=hp.file,
    )


def kv(key: str, value: Any, value_type: GGUFValueType, sub_type: GGUFValueType | None = None) -> Metadatum:
    return Metadatum(key, value, value_type, sub_type)


def u32(key: str, value: int) -> Metadatum:
    return Metadatum(key, int(value), GGUFValueType.UINT32)


def f32(key: str, value: float) -> Metadatum:
    return Metadatum(key, float(value), GGUFValueType.FLOAT32)


def string(key: str, value: str) -> Metadatum:
    return Metadatum(key, value, GGUFValueType.STRING)


def boolean(key: str, value: bool) -> Metadatum:
    return Metadatum(key, bool(value), GGUFValueType.BOOL)


def model_name(checkpoint: Checkpoint) -> str:
    """A Hugging Face style model name: `_name_or_path`'s last part, else the directory name."""
    name_or_path = checkpoint.config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.strip():
        candidate = name_or_path.rstrip("/").split("/")[-1]
        if candidate and candidate not in (".", ".."):
            return candidate
    from phiquant.hub import snapshot_repo_name  # a hub cache snapshot folder is named by its commit

    return snapshot_repo_name(checkpoint.path) or checkpoint.path.resolve().name


def size_label(n_parameters: int) -> str:
    """Parameter count as Hugging Face model names write it: 3.8B, 14B, 250M."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n_parameters >= scale:
            value = n_parameters / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(n_parameters)


def general_metadata(name: str, n_parameters: int) -> list[Metadatum]:
    return [
        string("general.type", "model"),
        string("general.name", name),
        string("general.size_label", size_label(n_parameters)),
    ]


def provenance_metadata() -> list[Metadatum]:
    """Which phiquant and llama.cpp (through llama-cpp-python) made the file."""
    from importlib.metadata import PackageNotFoundError, version

    from phiquant.version import __version__

    try:
        llama_cpp_python = version("llama_cpp_python")
    except PackageNotFoundError:
        llama_cpp_python = "not installed"
    return [
        string("phiquant.version", __version__),
        string("phiquant.llama_cpp_python_version", llama_cpp_python),
    ]


def checkpoint_tensor(
    entry: TensorEntry, gguf_name: str, expected_torch_shape: Sequence[int], config_file: str
) -> SourceTensor:
    """Map one checkpoint tensor unchanged to a GGUF tensor, after checking its shape."""
    check_shape(entry, expected_torch_shape, config_file)
    return SourceTensor(
        name=gguf_name,
        shape=tuple(reversed(entry.shape)),
        base_type=GGMLType.F32,
        read_rows=entry.read,
        read_ahead=entry.read_ahead,
    )


def check_shape(entry: TensorEntry, expected: Sequence[int], config_file: str) -> None:
    if tuple(entry.shape) != tuple(expected):
        raise PhiquantError(
            f"tensor {entry.name!r} has shape {list(entry.shape)} but {config_file} implies {list(expected)}",
            path=entry.file,
        )


def float32_tensor(name: str, values: Sequence[float]) -> SourceTensor:
    """A small generated 1-D tensor (e.g. LongRoPE factors)."""
    array = np.asarray(values, dtype=np.float32).reshape(1, -1)
    return SourceTensor(name, (array.shape[1],), GGMLType.F32, lambda start, stop: array[start:stop])


def layer_index(name: str, pattern: re.Pattern[str]) -> int | None:
    match = pattern.match(name)
    return int(match.group(1)) if match else None


def dominant_stored_type(checkpoint: Checkpoint) -> int:
    """The ggml type `auto` keeps: the dtype holding most of the checkpoint's bytes."""
    by_dtype: dict[str, int] = {}
    for entry in checkpoint.tensors.values():
        by_dtype[entry.dtype] = by_dtype.get(entry.dtype, 0) + entry.nbytes
    dtype = max(by_dtype, key=lambda d: by_dtype[d]) if by_dtype else "F32"
    return STORED_GGML_TYPE[dtype]


class FamilyVocabulary(Protocol):
    """What every family's vocabulary (SentencePiece or byte-level BPE) offers the GGUF writer."""

    added: list[AddedToken]
    warnings: list[str]

    def metadata(self) -> list[Metadatum]: ...


def tokenizer_metadata(
    checkpoint: Checkpoint, vocabulary: FamilyVocabulary, special: SpecialTokens
) -> list[Metadatum]:
    """The tokenizer block every Phi family writes after its hyper-parameters: the pieces, the special
    ids, the chat template, the full end-of-generation list and the HF strip flags."""
    return (
        vocabulary.metadata()
        + special.metadata()
        + chat_template_metadata(chat_template(checkpoint))
        + [eog_metadata(special)]
        + strip_flag_metadata(vocabulary.added)
    )


def with_source_metadata(metadata: list[Metadatum], checkpoint: Checkpoint) -> list[Metadatum]:
    """`metadata` with the model card's and hub's keys after the general.* block, where llama.cpp's
    converter writes them."""
    from phiquant.archs.source_metadata import source_metadata

    n_parameters = sum(entry.n_elements for entry in checkpoint.tensors.values())
    extra = source_metadata(checkpoint.path, n_parameters)
    general_end = next(
        (i for i, item in enumerate(metadata) if not item.key.startswith("general.")), len(metadata)
    )
    return metadata[:general_end] + extra + metadata[general_end:]


def checkpoint_model_source(
    checkpoint: Checkpoint,
    arch: str,
    metadata: list[Metadatum],
    tensors: list[SourceTensor],
    special: SpecialTokens,
    warnings: list[str],
) -> ModelSource:
    """The ModelSource of a converted checkpoint, with provenance last and the warnings every family
    shares (end-of-generation ids that llama.cpp's three slots cannot hold)."""
    source = ModelSource(
        arch=arch,
        metadata=with_source_metadata(metadata, checkpoint) + provenance_metadata(),
        tensors=tensors,
        stored_type=dominant_stored_type(checkpoint),
        origin=str(checkpoint.path),
        source_bytes=checkpoint.source_bytes,
    )
    source.warnings += warnings
    if special.dropped_eog_ids:
        source.warnings.append(
            f"end-of-generation ids {special.dropped_eog_ids} do not fit llama.cpp's eos/eot/eom slots; "
            "phiquant's runtime stops on them, other llama.cpp runtimes may not"
        )
    return source
