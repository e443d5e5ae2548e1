"""The phimoe GGUF holds what llama.cpp's phimoe loader reads (src/models/phimoe.cpp), with values taken
from the checkpoint, experts stacked in order, and the residual-stream writers centred without changing
what the model computes (checked in transformers, whose PhiMoE uses real LayerNorms)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from phiquant import api
from phiquant.archs.lazy_tensors import stacked_experts
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.gguf_io.reader import GGUFFile
from tests.fixtures.phimoe_reference import load_phimoe_model
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.oracles import llama_cpp_logits, normalised_mse, top1_agreement, transformers_logits

F32, BF16 = 0, 30


def gguf_array(gguf: GGUFFile, name: str) -> np.ndarray:
    """An F32 tensor in numpy order (the reverse of ggml's ne)."""
    tensor = gguf.tensor(name)
    assert tensor.ggml_type == F32
    return np.array(gguf.raw_bytes(tensor).view(np.float32).reshape(tuple(reversed(tensor.shape))))


def checkpoint_array(checkpoint, name: str) -> np.ndarray:
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    with safe_open(str(checkpoint / index["weight_map"][name]), "pt") as shard:
        return shard.get_tensor(name).float().numpy()


def test_hyperparameters_come_from_config_json(shared_phimoe_checkpoint, converted_phimoe_gguf) -> None:
    config = json.loads((shared_phimoe_checkpoint(PHI35_MOE) / "config.json").read_text())
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
    assert gguf.arch == "phimoe"
    expected = {
        "context_length": config["max_position_embeddings"],
        "embedding_length": config["hidden_size"],
        "feed_forward_length": config["intermediate_size"],
        "block_count": config["num_hidden_layers"],
        "attention.head_count": config["num_attention_heads"],
        "attention.head_count_kv": config["num_key_value_heads"],
        "rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "rope.freq_base": config["rope_theta"],
        "attention.sliding_window": config["sliding_window"],
        # nested inside rope_scaling in Phi-3.5-MoE's config
        "rope.scaling.original_context_length": config["rope_scaling"]["original_max_position_embeddings"],
        "expert_count": config["num_local_experts"],
        "expert_used_count": config["num_experts_per_tok"],
    }
    assert {key: gguf.get(f"phimoe.{key}") for key in expected} == expected
    assert gguf.get("phimoe.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])


def test_attention_factor_is_the_mscale_transformers_applies(
    shared_phimoe_checkpoint, converted_phimoe_gguf
) -> None:
    """transformers scales cos/sin by the config's mscale (cos at position 0 is the scale itself);
    llama.cpp scales them by rope.scaling.attn_factor.  llama.cpp's own converter would write the
    computed sqrt(1 + ln 32 / ln 256) instead."""
    model = load_phimoe_model(shared_phimoe_checkpoint(PHI35_MOE))
    for length in (48, 600):  # short and long factors
        cos, _ = model.model.rotary_emb(torch.zeros(1), torch.arange(length)[None])
        gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
        assert gguf.get("phimoe.rope.scaling.attn_factor") == pytest.approx(cos[0, 0, 0].item(), rel=1e-6)
    computed = math.sqrt(1 + math.log(32) / math.log(256))
    assert gguf.get("phimoe.rope.scaling.attn_factor") != pytest.approx(computed, rel=1e-3)


def test_rope_factor_tensors_hold_the_config_lists(shared_phimoe_checkpoint, converted_phimoe_gguf) -> None:
    config = json.loads((shared_phimoe_checkpoint(PHI35_MOE) / "config.json").read_text())
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
    for kind in ("long", "short"):
        # phimoe.cpp wants {n_embd_head / 2} values
        assert gguf.tensor(f"rope_factors_{kind}.weight").shape == (PHI35_MOE.head_dim // 2,)
        np.testing.assert_array_equal(
            gguf_array(gguf, f"rope_factors_{kind}.weight"),
            np.float32(config["rope_scaling"][f"{kind}_factor"]),
        )


def expected_tensors(spec) -> dict[str, tuple[int, ...]]:
    """Name -> ggml shape, as src/models/phimoe.cpp creates them (split q/k/v with biases)."""
    embd, ff, n_expert, kv = spec.hidden_size, spec.intermediate_size, spec.num_local_experts, spec.head_dim
    kv *= spec.num_key_value_heads
    shapes = {
        "token_embd.weight": (embd, spec.vocab_size),
        "output_norm.weight": (embd,),
        "output_norm.bias": (embd,),
        "output.weight": (embd, spec.vocab_size),
        "output.bias": (spec.vocab_size,),
        "rope_factors_long.weight": (spec.head_dim // 2,),
        "rope_factors_short.weight": (spec.head_dim // 2,),
    }
    for i in range(spec.num_hidden_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (embd,),
            f"blk.{i}.attn_norm.bias": (embd,),
            f"blk.{i}.attn_q.weight": (embd, embd),
            f"blk.{i}.attn_q.bias": (embd,),
            f"blk.{i}.attn_k.weight": (embd, kv),
            f"blk.{i}.attn_k.bias": (kv,),
            f"blk.{i}.attn_v.weight": (embd, kv),
            f"blk.{i}.attn_v.bias": (kv,),
            f"blk.{i}.attn_output.weight": (embd, embd),
            f"blk.{i}.attn_output.bias": (embd,),
            f"blk.{i}.ffn_norm.weight": (embd,),
            f"blk.{i}.ffn_norm.bias": (embd,),
            f"blk.{i}.ffn_gate_inp.weight": (embd, n_expert),
            f"blk.{i}.ffn_gate_exps.weight": (embd, ff, n_expert),
            f"blk.{i}.ffn_down_exps.weight": (ff, embd, n_expert),
            f"blk.{i}.ffn_up_exps.weight": (embd, ff, n_expert),
        }
    return shapes


def test_tensors_are_what_the_phimoe_loader_creates(converted_phimoe_gguf) -> None:
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "bf16"))
    assert {t.name: t.shape for t in gguf.tensors} == expected_tensors(PHI35_MOE)
    for tensor in gguf.tensors:
        # llama.cpp's converter keeps 1-D tensors and the router (FFN_GATE_INP) in F32
        keeps_f32 = len(tensor.shape) == 1 or tensor.name.endswith("ffn_gate_inp.weight")
        assert tensor.ggml_type == (F32 if keeps_f32 else BF16), tensor.name


def test_experts_are_stacked_in_expert_order(shared_phimoe_checkpoint, converted_phimoe_gguf) -> None:
    checkpoint = shared_phimoe_checkpoint(PHI35_MOE)
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
    layer = PHI35_MOE.num_hidden_layers - 1
    gate, up = (
        gguf_array(gguf, f"blk.{layer}.ffn_gate_exps.weight"),
        gguf_array(gguf, f"blk.{layer}.ffn_up_exps.weight"),
    )
    down = gguf_array(gguf, f"blk.{layer}.ffn_down_exps.weight")
    prefix = f"model.layers.{layer}.block_sparse_moe"
    for expert in range(PHI35_MOE.num_local_experts):
        np.testing.assert_array_equal(
            gate[expert], checkpoint_array(checkpoint, f"{prefix}.experts.{expert}.w1.weight")
        )
        np.testing.assert_array_equal(
            up[expert], checkpoint_array(checkpoint, f"{prefix}.experts.{expert}.w3.weight")
        )
        w2 = checkpoint_array(checkpoint, f"{prefix}.experts.{expert}.w2.weight").astype(np.float64)
        np.testing.assert_allclose(down[expert], w2 - w2.mean(axis=0), atol=1e-7)  # centred columns
    np.testing.assert_array_equal(
        gguf_array(gguf, f"blk.{layer}.ffn_gate_inp.weight"),
        checkpoint_array(checkpoint, f"{prefix}.gate.weight"),
    )


def test_residual_stream_writers_have_zero_mean(converted_phimoe_gguf) -> None:
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
    writers = [gguf_array(gguf, "token_embd.weight")]  # rows: one embedding per token
    for i in range(PHI35_MOE.num_hidden_layers):
        writers += [
            gguf_array(gguf, f"blk.{i}.attn_output.weight").T,  # columns across the output dimension
            gguf_array(gguf, f"blk.{i}.attn_output.bias")[None],
            *gguf_array(gguf, f"blk.{i}.ffn_down_exps.weight").transpose(0, 2, 1),
        ]
    assert max(float(np.abs(w.astype(np.float64).mean(axis=-1)).max()) for w in writers) < 1e-7


def test_centred_weights_leave_the_original_model_unchanged(
    shared_phimoe_checkpoint, converted_phimoe_gguf
) -> None:
    """Put our centred weights into transformers' PhiMoE (real LayerNorms, its own router): its logits
    do not move, so centring changes the stored weights and not the function."""
    checkpoint = shared_phimoe_checkpoint(PHI35_MOE)
    model = load_phimoe_model(checkpoint)
    tokens = np.random.default_rng(1).integers(3, 32000, size=64).tolist()
    before = transformers_logits(model, tokens)
    gguf = read_gguf(converted_phimoe_gguf(PHI35_MOE, "f32"))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(gguf_array(gguf, "token_embd.weight")))
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.copy_(
                torch.from_numpy(gguf_array(gguf, f"blk.{i}.attn_output.weight"))
            )
            layer.self_attn.o_proj.bias.copy_(torch.from_numpy(gguf_array(gguf, f"blk.{i}.attn_output.bias")))
            layer.mlp.experts.down_proj.copy_(
                torch.from_numpy(gguf_array(gguf, f"blk.{i}.ffn_down_exps.weight"))
            )
    after = transformers_logits(model, tokens)
    assert not np.array_equal(before, after)  # the weights did change ...
    assert normalised_mse(after, before) < 1e-10  # ... the model did not
    assert top1_agreement(after, before) == 1.0


def test_stacked_experts_read_only_the_expert_asked_for() -> None:
    """Streaming: a slab of expert 2 reads expert 2's tensor and nothing else, so no layer's experts are
    ever held together."""
    calls: list[tuple[int, int, int]] = []

    def reader(expert: int):
        def read(start: int, stop: int) -> np.ndarray:
            calls.append((expert, start, stop))
            return np.full((stop - start, 4), expert, dtype=np.float32)

        return read

    tensor = stacked_experts("blk.0.ffn_up_exps.weight", [reader(e) for e in range(4)], 3, 4)
    assert tensor.shape == (4, 3, 4) and tensor.n_rows == 12
    np.testing.assert_array_equal(tensor.read_rows(6, 9), np.full((3, 4), 2.0))
    assert calls == [(2, 0, 3)]
    calls.clear()
    rows = tensor.read_rows(2, 7)  # a range across experts still comes out in order
    assert calls == [(0, 2, 3), (1, 0, 3), (2, 0, 1)]
    np.testing.assert_array_equal(rows[:, 0], [0, 1, 1, 1, 2])


@pytest.mark.slow
def test_configs_without_biases_get_the_zero_biases_llama_cpp_requires(
    make_phimoe_checkpoint, tmp_path
) -> None:
    """transformers' PhimoeConfig defaults attention_bias and lm_head_bias to false; llama.cpp's phimoe
    loader requires attn_output.bias and output.bias, so zeros are written (what transformers adds)."""
    checkpoint = make_phimoe_checkpoint(
        PHI35_MOE, attention_bias=False, lm_head_bias=False, num_hidden_layers=2
    )
    gguf_path = api.convert(checkpoint, tmp_path / "nobias.gguf", "f32").path
    gguf = read_gguf(gguf_path)
    assert not np.any(gguf_array(gguf, "output.bias"))
    assert not np.any(gguf_array(gguf, "blk.1.attn_output.bias"))
    assert "blk.0.attn_q.bias" not in {t.name for t in gguf.tensors}
    tokens = np.random.default_rng(2).integers(3, 32000, size=40).tolist()
    reference = transformers_logits(load_phimoe_model(checkpoint, router="softmax"), tokens)
    assert normalised_mse(llama_cpp_logits(gguf_path, tokens, 256), reference) < 1e-4


def test_attention_wider_than_the_hidden_size_is_refused(make_phimoe_checkpoint) -> None:
    checkpoint = make_phimoe_checkpoint(PHI35_MOE, num_hidden_layers=1, config_overrides={"head_dim": 128})
    with pytest.raises(PhiquantError, match="head_dim 128 x 4 heads != hidden_size 256"):
        api.load_hf_model(checkpoint)


def test_differing_mscales_use_the_long_one_and_say_so(make_phimoe_checkpoint) -> None:
    """llama.cpp has one attention factor for both LongRoPE factor sets; the long mscale goes with the
    long factors, which llama.cpp uses whenever its context exceeds the original length."""
    scaling = dataclasses.replace(PHI35_MOE.rope_scaling, short_mscale=1.1)
    checkpoint = make_phimoe_checkpoint(PHI35_MOE, num_hidden_layers=1, rope_scaling=scaling)
    source = api.load_hf_model(checkpoint)
    assert source.value("phimoe.rope.scaling.attn_factor") == pytest.approx(scaling.long_mscale)
    assert any("short_mscale 1.1 differs from long_mscale" in w for w in source.warnings)
