"""GGUF files in and out: an atomic streaming writer and a bounds-checked lazy reader."""

from phiquant.gguf_io.reader import GGUFFile, GGUFTensor, read_gguf
from phiquant.gguf_io.writer import (
    GGUFOutput,
    TensorInfo,
    check_free_space,
    format_bytes,
    open_outputs,
    padded,
    predicted_file_size,
    serialise_header,
)
from phiquant.model_source import Metadatum  # GGUF I/O speaks in it; it is defined with ModelSource

__all__ = [
    "GGUFFile",
    "GGUFOutput",
    "GGUFTensor",
    "Metadatum",
    "TensorInfo",
    "check_free_space",
    "format_bytes",
    "open_outputs",
    "padded",
    "predicted_file_size",
    "read_gguf",
    "serialise_header",
]
