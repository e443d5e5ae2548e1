"""Phi4ForCausalLMV (Phi-4-reasoning-vision-15B): a phi-4 language model (GGUF arch `phi3`) plus a vision
projector file (GGUF arch `clip`, projector type `phi4`) that llama.cpp's libmtmd runs.

The checkpoint holds three parts: the phi-4 trunk under Phi3ForCausalLM names, a SigLIP2 (NaFlex) tower
under `model.vision_tower.vision_tower.vision_model.`, and a two-layer GELU projector `model.mm_projector.{0,2}`.
The language model converts as phi-4 does (phi3.build on the trunk's tensors).  The projector file follows
llama.cpp's converter (conversion/phi.py Phi4VisionMmprojModel), because libmtmd reads exactly that:

* the model consumes SigLIP2's second-to-last hidden state, so the last encoder layer, the post-layernorm
  and the attention-pool head are not written, and `clip.vision.block_count` is the layer count minus one;
* SigLIP2 embeds patches with a Linear over (row, column, channel) values; clip.cpp convolves, so the
  weight is reshaped to [out, p, p, C] and permuted to [out, C, p, p];
* image size = the position grid's side x patch size; min/max pixels = min/max_num_patches x patch area
  (preprocessor_config.json first, config.json second);
* only projector layers 0 and 2 have weights (1 is the GELU), written as `mm.0` and `mm.2`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from gguf import GGUFValueType

from phiquant.archs import phi3
from phiquant.archs.common import boolean, f32, kv, model_name, size_label, string, u32
from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.tensor_entry import TensorEntry
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum, ModelSource, ProjectorSource, ProjectorTensor

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
PROJECTOR_TYPE = "phi4"
# The marker the model's processor replaces with image features (processing_phi4_visionr DEFAULT_IMAGE_TOKEN).
IMAGE_MARKER = "<image>"
# Parts of the tower the second-to-last hidden state does not use.
UNUSED_TOWER_PARTS = ("head.", "post_layernorm.")
LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")

# SigLIP2 encoder-layer module -> clip.cpp name inside `v.blk.N.` (gguf-py's MMPROJ tensor map).
LAYER_TENSORS = {
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
    "self_attn.k_proj": "attn_k",
    "self_attn.out_proj": "attn_out",
    "self_attn.q_proj": "attn_q",
    "self_attn.v_proj": "attn_v",
}
EMBEDDING_TENSORS = {
    "embeddings.patch_embedding": "v.patch_embd",
    "embeddings.position_embedding": "v.position_embd",
}


def is_text_tensor(name: str) -> bool:
    return not name.startswith((VISION_PREFIX, PROJECTOR_PREFIX, "model.vision_tower."))


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    text = {key: value for key, value in config.items() if key != "vision_config"}
    text["architectures"] = ["Phi3ForCausalLM"]
    text["model_type"] = "phi3"
    return text


def build(checkpoint: Checkpoint) -> ModelSource:
    """The language model as phi-4's `phi3` ModelSource, with the projector file attached."""
    tensors = {name: entry for name, entry in checkpoint.tensors.items() if is_text_tensor(name)}
    text_checkpoint = Checkpoint(checkpoint.path, text_config(checkpoint.config), tensors)
    text_checkpoint._json_cache.update(checkpoint._json_cache)
    source = phi3.build(text_checkpoint)
    source.projector = build_projector(checkpoint)
    return source


@dataclasses.dataclass(frozen=True)
class VisionHParams:
    hidden_size: int
    intermediate_size: int
    head_count: int
    total_layers: int
    patch_size: int
    min_num_patches: int
    max_num_patches: int
    layer_norm_eps: float
    text_hidden_size: int

    @property
    def exported_layers(self) -> int:
        return self.total_layers - 1


def read_vision_hparams(checkpoint: Checkpoint) -> VisionHParams:
    config_file = checkpoint.path / "config.json"
    vision = checkpoint.config.get("vision_config")
    if not isinstance(vision, dict):
        raise PhiquantError("Phi4ForCausalLMV needs a vision_config block", path=config_file)
    preprocessor = checkpoint.json_file("preprocessor_config.json")
    if preprocessor is None:
        raise PhiquantError(
            "preprocessor_config.json is missing: the image patch size and pixel limits come from it",
            path=checkpoint.path,
        )
    preprocessor_file = checkpoint.path / "preprocessor_config.json"

    def positive(table: dict[str, Any], key: str, file: Any, fallback: dict[str, Any] | None = None) -> int:
        value = table.get(key, (fallback or {}).get(key))
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PhiquantError(f"{key} must be a positive integer, not {value!r}", path=file)
        return value

    total_layers = positive(vision, "num_hidden_layers", config_file)
    if total_layers < 2:
        raise PhiquantError(
            f"vision_config.num_hidden_layers is {total_layers}: the model reads the second-to-last layer, "
            "so it needs at least 2",
            path=config_file,
        )
    eps = vision.get("layer_norm_eps", 1e-6)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps > 0:
        raise PhiquantError(f"vision_config.layer_norm_eps must be positive, not {eps!r}", path=config_file)
    min_patches = positive(preprocessor, "min_num_patches", preprocessor_file, checkpoint.config)
    max_patches = positive(preprocessor, "max_num_patches", preprocessor_file, checkpoint.config)
    if min_patches > max_patches:
        raise PhiquantError(
            f"min_num_patches {min_patches} is above max_num_patches {max_patches}", path=preprocessor_file
        )
    return VisionHParams(
        hidden_size=positive(vision, "hidden_size", config_file),
        intermediate_size=positive(vision, "intermediate_size", config_file),
        head_count=positive(vision, "num_attention_heads", config_file),
        total_layers=total_layers,
        patch_size=positive(preprocessor, "patch_size", preprocessor_file),
        min_num_patches=min_patches,
        max_num_patches=max_patches,
        layer_norm_eps=float(eps),
        text_hidden_size=positive(checkpoint.config, "hidden_size", config_file),
    )


def projector_tensor_name(hf_name: str, exported_layers: int) -> str | None:
    """The clip.cpp name of a checkpoint tensor, or None for tensors the projector file leaves out."""
    if hf_name.startswith(PROJECTOR_PREFIX):
        position, _, kind = hf_name.removeprefix(PROJECTOR_PREFIX).partition(".")
        return f"mm.{position}.{kind}" if position in ("0", "2") and kind in ("weight", "bias") else None
    if not hf_name.startswith(VISION_PREFIX):
        return None
    local = hf_name.removeprefix(VISION_PREFIX)
    if local.startswith(UNUSED_TOWER_PARTS):
        return None
    module, _, suffix = local.rpartition(".")
    if module in EMBEDDING_TENSORS:
        return f"{EMBEDDING_TENSORS[module]}.{suffix}"
    layer = LAYER.match(local)
    if layer is None:
        return None
    block = int(layer.group(1))
    part, _, end = layer.group(2).rpartition(".")
    if block >= exported_layers or part not in LAYER_TENSORS:
        return None
    return f"v.blk.{block}.{LAYER_TENSORS[part]}.{end}"


def _reader(
    entry: TensorEntry, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        array = np.asarray(entry.read(), dtype=np.float32).reshape(entry.shape)
        return transform(array) if transform else array

    return read


def patch_embedding_as_convolution(patch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    def permute(weight: np.ndarray) -> np.ndarray:
        out_features, in_features = weight.shape
        channels = in_features // (patch_size * patch_size)
        return np.ascontiguousarray(
            weight.reshape(out_features, patch_size, patch_size, channels).transpose(0, 3, 1, 2)
        )

    return permute


def check_projector_tensors(
    checkpoint: Checkpoint, hp: VisionHParams, tensors: dict[str, TensorEntry]
) -> None:
    def require(name: str, shape: tuple[int, ...]) -> None:
        entry = checkpoint.tensors.get(name)
        if entry is None:
            raise PhiquantError(
                f"missing tensor {name!r} of the vision tower or projector", path=checkpoint.path
            )
        if tuple(entry.shape) != shape:
            raise PhiquantError(
                f"tensor {name!r} has shape {list(entry.shape)}; config.json and preprocessor_config.json "
                f"imply {list(shape)}",
                path=entry.file,
            )

    patch_values = hp.patch_size * hp.patch_size
    patch = checkpoint.tensors.get(f"{VISION_PREFIX}embeddings.patch_embedding.weight")
    if patch is None or len(patch.shape) != 2 or patch.shape[1] % patch_values:
        raise PhiquantError(
            "the SigLIP2 patch embedding must be a Linear whose input is a multiple of the patch area "
            f"{patch_values}",
            path=checkpoint.path,
        )
    require(f"{VISION_PREFIX}embeddings.patch_embedding.weight", (hp.hidden_size, patch.shape[1]))
    for layer in range(hp.exported_layers):
        for module, (rows, cols) in {
            "self_attn.q_proj": (hp.hidden_size, hp.hidden_size),
            "self_attn.k_proj": (hp.hidden_size, hp.hidden_size),
            "self_attn.v_proj": (hp.hidden_size, hp.hidden_size),
            "self_attn.out_proj": (hp.hidden_size, hp.hidden_size),
            "mlp.fc1": (hp.intermediate_size, hp.hidden_size),
            "mlp.fc2": (hp.hidden_size, hp.intermediate_size),
        }.items():
            require(f"{VISION_PREFIX}encoder.layers.{layer}.{module}.weight", (rows, cols))
    require(f"{PROJECTOR_PREFIX}0.weight", (hp.text_hidden_size, hp.hidden_size))
    require(f"{PROJECTOR_PREFIX}0.bias", (hp.text_hidden_size,))
    require(f"{PROJECTOR_PREFIX}2.weight", (hp.text_hidden_size, hp.text_hidden_size))
    require(f"{PROJECTOR_PREFIX}2.bias", (hp.text_hidden_size,))
    if not tensors:
        raise PhiquantError("no vision tower tensors found", path=checkpoint.path)


def position_grid_side(checkpoint: Checkpoint, hp: VisionHParams) -> int:
    name = f"{VISION_PREFIX}embeddings.position_embedding.weight"
    entry = checkpoint.tensors.get(name)
    if entry is None:
        raise PhiquantError(f"missing tensor {name!r}", path=checkpoint.path)
    rows = entry.shape[0]
    side = math.isqrt(rows)
    if side * side != rows or tuple(entry.shape) != (rows, hp.hidden_size):
        raise PhiquantError(
            f"the position embedding has shape {list(entry.shape)}; a square grid of {hp.hidden_size}-wide "
            "rows is expected",
            path=entry.file,
        )
    return side


def projector_metadata(
    name: str, hp: VisionHParams, grid_side: int, n_parameters: int, mean: list[float], std: list[float]
) -> list[Metadatum]:
    """The keys llama.cpp's converter writes, in its order (general.file_type is added by the writer)."""
    patch_area = hp.patch_size * hp.patch_size
    return [
        string("general.type", "mmproj"),
        string("general.name", name),
        string("general.size_label", size_label(n_parameters)),
        boolean("clip.has_vision_encoder", True),
        u32("clip.vision.projection_dim", hp.text_hidden_size),
        u32("clip.vision.image_size", grid_side * hp.patch_size),
        u32("clip.vision.patch_size", hp.patch_size),
        u32("clip.vision.embedding_length", hp.hidden_size),
        u32("clip.vision.feed_forward_length", hp.intermediate_size),
        u32("clip.vision.block_count", hp.exported_layers),
        u32("clip.vision.attention.head_count", hp.head_count),
        kv("clip.vision.image_mean", mean, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        kv("clip.vision.image_std", std, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        string("clip.projector_type", PROJECTOR_TYPE),
        u32("clip.vision.image_min_pixels", hp.min_num_patches * patch_area),
        u32("clip.vision.image_max_pixels", hp.max_num_patches * patch_area),
        boolean("clip.use_gelu", True),
        f32("clip.vision.attention.layer_norm_epsilon", hp.layer_norm_eps),
        u32("general.quantization_version", 2),
    ]


def image_mean_std(checkpoint: Checkpoint) -> tuple[list[float], list[float]]:
    preprocessor = checkpoint.json_file("preprocessor_config.json") or {}
    file = checkpoint.path / "preprocessor_config.json"
    values = []
    for key in ("image_mean", "image_std"):
        value = preprocessor.get(key)
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise PhiquantError(f"{key} must be a list of 3 numbers, not {value!r}", path=file)
        values.append([float(v) for v in value])
    if any(v <= 0 for v in values[1]):
        raise PhiquantError("image_std values must be positive", path=file)
    return values[0], values[1]


def build_projector(checkpoint: Checkpoint) -> ProjectorSource:
    hp = read_vision_hparams(checkpoint)
    grid_side = position_grid_side(checkpoint, hp)
    selected: dict[str, TensorEntry] = {}
    tensors: list[ProjectorTensor] = []
    # llama.cpp's converter walks the checkpoint's tensors in name order
    for hf_name in sorted(checkpoint.tensors):
        gguf_name = projector_tensor_name(hf_name, hp.exported_layers)
        if gguf_name is None:
            continue
        entry = checkpoint.tensors[hf_name]
        selected[gguf_name] = entry
        torch_shape: tuple[int, ...]
        if gguf_name == "v.patch_embd.weight":
            torch_shape = (entry.shape[0], entry.shape[1] // hp.patch_size**2, hp.patch_size, hp.patch_size)
            read = _reader(entry, patch_embedding_as_convolution(hp.patch_size))
        else:
            torch_shape = tuple(entry.shape)
            read = _reader(entry)
        tensors.append(ProjectorTensor(gguf_name, tuple(reversed(torch_shape)), read))
    check_projector_tensors(checkpoint, hp, selected)
    mean, std = image_mean_std(checkpoint)
    n_parameters = sum(math.prod(t.shape) for t in tensors)
    metadata = projector_metadata(model_name(checkpoint), hp, grid_side, n_parameters, mean, std)
    return ProjectorSource(metadata=metadata, tensors=tensors, origin=str(checkpoint.path))
