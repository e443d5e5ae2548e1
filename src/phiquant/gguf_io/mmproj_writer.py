"""Writing a vision projector (llama.cpp `mmproj`) GGUF file with llama.cpp's converter's type rules.

The projector is never quantized by the language model's types: its file has its own type
(`--mmproj-type f16|bf16|q8_0|f32`), applied as llama.cpp's convert_hf_to_gguf.py applies `--outtype`
to an mmproj (conversion/base.py ModelBase.prepare_tensors and MmprojModel.tensor_force_quant):
the patch embedding is F16 in an F16 file and F32 otherwise; 1-D tensors, norms, biases and the
position embedding are F32; the other weights take the file's type, and a Q8_0 weight whose rows are
not whole blocks falls back to F16.  Encoding goes through gguf-py's `quants.quantize`, which the
converter uses too, so the bytes are the converter's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, quants

from phiquant.errors import PhiquantError
from phiquant.gguf_io.writer import GGUFOutput, TensorInfo
from phiquant.model_source import Metadatum, ProjectorSource, ProjectorTensor

MMPROJ_ARCH = "clip"
# --mmproj-type -> (tensor type for weights, general.file_type as llama.cpp's LlamaFileType numbers it)
MMPROJ_TYPES: dict[str, tuple[GGMLQuantizationType, int]] = {
    "f16": (GGMLQuantizationType.F16, 1),
    "bf16": (GGMLQuantizationType.BF16, 32),
    "q8_0": (GGMLQuantizationType.Q8_0, 7),
    "f32": (GGMLQuantizationType.F32, 0),
}
DEFAULT_MMPROJ_TYPE = "f16"
ALWAYS_F32 = ("v.position_embd.weight",)


def parse_mmproj_type(name: str) -> str:
    lowered = name.lower()
    if lowered not in MMPROJ_TYPES:
        raise PhiquantError(f"unknown --mmproj-type {name!r}; choose one of {', '.join(MMPROJ_TYPES)}")
    return lowered


def mmproj_file_name(model_name: str, mmproj_type: str) -> str:
    """`<name>-mmproj-F16.gguf`: found beside `<name>-<TYPE>.gguf` by the runtime."""
    return f"{model_name}-mmproj-{mmproj_type.upper()}.gguf"


def projector_tensor_type(tensor: ProjectorTensor, mmproj_type: str) -> GGMLQuantizationType:
    weights_type = MMPROJ_TYPES[mmproj_type][0]
    if tensor.name.endswith(".patch_embd.weight"):
        return GGMLQuantizationType.F16 if mmproj_type == "f16" else GGMLQuantizationType.F32
    if len(tensor.shape) <= 1 or tensor.name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    if tensor.name in ALWAYS_F32 or not tensor.name.endswith(".weight"):
        return GGMLQuantizationType.F32
    if weights_type == GGMLQuantizationType.Q8_0 and tensor.shape[0] % 32:
        return GGMLQuantizationType.F16
    return weights_type


def _encoded(tensor: ProjectorTensor, ggml_type: GGMLQuantizationType) -> np.ndarray:
    data = tensor.read()
    expected = tuple(reversed(tensor.shape))
    if data.shape != expected:
        raise PhiquantError(f"tensor {tensor.name} read as {list(data.shape)}, expected {list(expected)}")
    return quants.quantize(np.ascontiguousarray(data, dtype=np.float32), ggml_type)


def write_mmproj(projector: ProjectorSource, path: Path, mmproj_type: str = DEFAULT_MMPROJ_TYPE) -> Path:
    """Write the projector file atomically (nothing is left behind on error)."""
    mmproj_type = parse_mmproj_type(mmproj_type)
    types = [projector_tensor_type(tensor, mmproj_type) for tensor in projector.tensors]
    infos = [
        TensorInfo(tensor.name, tensor.shape, int(ggml_type), _byte_size(tensor.shape, ggml_type))
        for tensor, ggml_type in zip(projector.tensors, types, strict=True)
    ]
    file_type = Metadatum("general.file_type", MMPROJ_TYPES[mmproj_type][1], GGUFValueType.UINT32)
    metadata = _with_file_type(projector.metadata, file_type)
    with GGUFOutput(path, MMPROJ_ARCH, metadata, infos) as output:
        for tensor, ggml_type in zip(projector.tensors, types, strict=True):
            output.write(_encoded(tensor, ggml_type))
    return path


def _byte_size(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_elements = int(np.prod(shape))
    return n_elements // block_size * type_size


def _with_file_type(metadata: list[Metadatum], file_type: Metadatum) -> list[Metadatum]:
    """general.file_type after the general.* block, where the converter writes it."""
    items = [item for item in metadata if item.key != "general.file_type"]
    position = next((i for i, item in enumerate(items) if not item.key.startswith("general.")), len(items))
    return [*items[:position], file_type, *items[position:]]


def find_mmproj(model_file: Path) -> Path | None:
    """The projector `convert` writes beside a model: `<name>-mmproj-<TYPE>.gguf` in its directory
    (several: the one named after the model; still several: the user must choose)."""
    candidates = sorted(model_file.parent.glob("*mmproj*.gguf"))
    if len(candidates) > 1:
        stem = model_file.name.rsplit("-", 1)[0]
        candidates = [c for c in candidates if c.name.startswith(f"{stem}-mmproj-")] or candidates
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise PhiquantError(
            f"several vision projectors beside the model ({names}): choose one with --mmproj", path=model_file
        )
    return candidates[0] if candidates else None
