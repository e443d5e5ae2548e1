"""The model being written: GGUF metadata and lazy tensors, whatever it was read from
(a Hugging Face checkpoint through an arch module, or an existing GGUF file)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGUFValueType


@dataclass(frozen=True)
class Metadatum:
    """One GGUF key/value pair; `sub_type` is the element type of an array."""

    key: str
    value: Any
    value_type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class SourceTensor:
    """A tensor to write to the GGUF file, not yet read.

    `shape` is in ggml `ne` order (shape[0] is the row length).  `read_rows(start, stop)` returns
    those rows of the tensor viewed as 2-D (rows x shape[0]) as float32.  `base_type` is the ggml
    type the tensor has in the equivalent llama.cpp input file (F32 for a Hugging Face checkpoint,
    whose F32 GGUF is the reference for quantization).
    """

    name: str
    shape: tuple[int, ...]
    base_type: int
    read_rows: Callable[[int, int], np.ndarray]
    # rows [start, stop) as the stored bytes of base_type; copied unchanged when the target type is
    # the stored type (as llama_model_quantize does), which matters for already-quantized sources
    read_raw: Callable[[int, int], np.ndarray] | None = None
    # hints that rows [start, stop) will be read soon, so the disk works while the cores encode
    read_ahead: Callable[[int, int], None] | None = None

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ProjectorTensor:
    """A tensor of a multimodal projector file: `shape` in ggml `ne` order, `read()` the whole tensor as
    float32 in the layout it is written (projector towers are small next to the language model)."""

    name: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


@dataclass
class ProjectorSource:
    """A vision projector file (llama.cpp `mmproj`, GGUF arch `clip`) written beside the language model."""

    metadata: list[Metadatum]  # without general.file_type, which follows the chosen type
    tensors: list[ProjectorTensor]
    origin: str


@dataclass
class ModelSource:
    """A model ready to be written: GGUF metadata (in order) and tensors (in llama.cpp's order)."""

    arch: str
    metadata: list[Metadatum]
    tensors: list[SourceTensor]
    stored_type: int  # the ggml type `auto` resolves to
    origin: str  # where it came from, for messages
    source_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    projector: ProjectorSource | None = None  # multimodal checkpoints: the mmproj file to write beside it

    def value(self, key: str, default: Any = None) -> Any:
        for item in self.metadata:
            if item.key == key:
                return item.value
        return default
