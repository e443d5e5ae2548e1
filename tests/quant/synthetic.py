"""Tiny synthetic Phi-3 / PhiMoE GGUF files (F32) that llama.cpp's quantizer accepts.

llama_model_quantize only loads hyperparameters (load_hparams), not the vocabulary or the tensor shapes,
so a file needs the <arch>.* keys below and real-format tensors, nothing else.  Tensors are written in a
converter-like order (token_embd first, output last) so that tests see llama.cpp re-sort them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from phiquant.quant.plan import ModelFacts, TensorDesc
from phiquant.quant.types import GGMLType


@dataclass(frozen=True)
class SyntheticModel:
    label: str
    arch: str = "phi3"
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 8
    n_ff: int = 256
    n_layer: int = 8
    n_vocab: int = 256
    tied: bool = False
    n_expert: int = 0
    seed: int = 0

    @property
    def n_embd_gqa(self) -> int:
        return self.n_embd // self.n_head * self.n_head_kv

    @property
    def facts(self) -> ModelFacts:
        return ModelFacts(self.arch, self.n_layer, self.n_head, self.n_head_kv, self.n_expert)


# ggml shapes (ne order: row length first) of every tensor, in converter order.
def tensor_shapes(model: SyntheticModel) -> dict[str, tuple[int, ...]]:
    e, ff, gqa = model.n_embd, model.n_ff, model.n_embd_gqa
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (e, model.n_vocab)}
    if model.arch == "phi3":
        shapes["rope_factors_long.weight"] = (e // model.n_head // 2,)
        shapes["rope_factors_short.weight"] = (e // model.n_head // 2,)
    for i in range(model.n_layer):
        blk = f"blk.{i}."
        shapes[blk + "attn_norm.weight"] = (e,)
        if model.arch == "phi3":
            shapes[blk + "attn_qkv.weight"] = (e, e + 2 * gqa)
            shapes[blk + "attn_output.weight"] = (e, e)
            shapes[blk + "ffn_norm.weight"] = (e,)
            shapes[blk + "ffn_up.weight"] = (e, 2 * ff)
            shapes[blk + "ffn_down.weight"] = (ff, e)
        else:
            shapes[blk + "attn_norm.bias"] = (e,)
            for part, rows in (("q", e), ("k", gqa), ("v", gqa)):
                shapes[blk + f"attn_{part}.weight"] = (e, rows)
                shapes[blk + f"attn_{part}.bias"] = (rows,)
            shapes[blk + "attn_output.weight"] = (e, e)
            shapes[blk + "attn_output.bias"] = (e,)
            shapes[blk + "ffn_norm.weight"] = (e,)
            shapes[blk + "ffn_norm.bias"] = (e,)
            shapes[blk + "ffn_gate_inp.weight"] = (e, model.n_expert)
            shapes[blk + "ffn_gate_exps.weight"] = (e, ff, model.n_expert)
            shapes[blk + "ffn_down_exps.weight"] = (ff, e, model.n_expert)
            shapes[blk + "ffn_up_exps.weight"] = (e, ff, model.n_expert)
    shapes["output_norm.weight"] = (e,)
    if model.arch == "phimoe":
        shapes["output_norm.bias"] = (e,)
    if not model.tied:
        shapes["output.weight"] = (e, model.n_vocab)
        if model.arch == "phimoe":
            shapes["output.bias"] = (model.n_vocab,)
    return shapes


def tensor_data(model: SyntheticModel) -> dict[str, np.ndarray]:
    """F32 values in numpy order (the ggml shape reversed).  Rows get different scales and a few
    outliers, so the quantizers' scale searches and the imatrix weighting have something to do."""
    rng = np.random.default_rng(model.seed)
    data = {}
    for name, shape in tensor_shapes(model).items():
        numpy_shape = tuple(reversed(shape))
        if len(shape) == 1:
            values = 1.0 + 0.1 * rng.standard_normal(numpy_shape)
        else:
            row_scale = rng.uniform(0.01, 0.2, size=numpy_shape[:-1] + (1,))
            values = rng.standard_normal(numpy_shape) * row_scale
            outliers = rng.random(numpy_shape) < 0.002
            values[outliers] *= 8.0
        data[name] = values.astype(np.float32)
    return data


def tensor_descs(model: SyntheticModel) -> list[TensorDesc]:
    return [TensorDesc(name, shape, GGMLType.F32) for name, shape in tensor_shapes(model).items()]


def write_model(
    model: SyntheticModel, path: Path, data: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Write the GGUF file (with `data`, or the model's own random tensors); returns the tensors."""
    writer = gguf.GGUFWriter(str(path), model.arch)
    writer.add_name(f"synthetic-{model.label}")
    writer.add_context_length(4096)
    writer.add_embedding_length(model.n_embd)
    writer.add_feed_forward_length(model.n_ff)
    writer.add_block_count(model.n_layer)
    writer.add_head_count(model.n_head)
    writer.add_head_count_kv(model.n_head_kv)
    writer.add_rope_dimension_count(model.n_embd // model.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    if model.n_expert:
        writer.add_expert_count(model.n_expert)
        writer.add_expert_used_count(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    data = tensor_data(model) if data is None else data
    for name, values in data.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return data


def random_imatrix(model: SyntheticModel, seed: int = 1) -> dict[str, np.ndarray]:
    """Positive weights for every matrix a real imatrix run would cover (not token_embd: a lookup),
    with ne[0] * n_expert values for stacked experts."""
    rng = np.random.default_rng(seed)
    entries = {}
    for name, shape in tensor_shapes(model).items():
        if len(shape) < 2 or not name.endswith(".weight") or name == "token_embd.weight":
            continue
        n_matrices = shape[2] if len(shape) > 2 else 1
        entries[name] = rng.uniform(0.05, 3.0, size=shape[0] * n_matrices).astype(np.float32)
    return entries


# The variants the oracle tests run: counters need 8 layers; GQA >= 4 and tied embeddings change rules;
# the last dense one has rows that fit no 256-block type (288) and rows that fit no 32-block type (200).
MAIN = SyntheticModel("gqa1")
GQA4 = SyntheticModel("gqa4", n_head_kv=2, seed=2)
TIED = SyntheticModel("tied", tied=True, seed=3)
ODD_ROWS = SyntheticModel("odd_rows", n_embd=288, n_ff=200, seed=4)
PHIMOE = SyntheticModel("phimoe", arch="phimoe", n_head_kv=2, n_ff=256, n_expert=4, seed=5)
