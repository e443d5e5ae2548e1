"""The phi3 GGUF carries what llama.cpp needs, with values taken from the checkpoint (not invented)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.quant.plan import llama_tensor_order
from tests.fixtures.phi3_specs import (
    ALL_PHI3_SPECS,
    PHI3_MEDIUM_4K,
    PHI3_MINI_4K,
    PHI3_MINI_128K_APRIL_2024,
    PHI35_MINI,
)
from tests.fixtures.transformers_reference import transformers_phi3_config

ALL_SPECS = pytest.mark.parametrize("spec", list(ALL_PHI3_SPECS.values()), ids=list(ALL_PHI3_SPECS))


@ALL_SPECS
def test_hyperparameters_come_from_config_json(spec, shared_phi3_checkpoint, converted_gguf) -> None:
    config = json.loads((shared_phi3_checkpoint(spec) / "config.json").read_text())
    gguf = read_gguf(converted_gguf(spec, "f32"))
    assert gguf.arch == "phi3"
    assert gguf.get("phi3.context_length") == config["max_position_embeddings"]
    assert gguf.get("phi3.embedding_length") == config["hidden_size"]
    assert gguf.get("phi3.feed_forward_length") == config["intermediate_size"]
    assert gguf.get("phi3.block_count") == config["num_hidden_layers"]
    assert gguf.get("phi3.attention.head_count") == config["num_attention_heads"]
    assert gguf.get("phi3.attention.head_count_kv") == config["num_key_value_heads"]
    assert gguf.get("phi3.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert gguf.get("phi3.rope.dimension_count") == config["hidden_size"] // config["num_attention_heads"]
    assert gguf.get("phi3.rope.freq_base") == config["rope_theta"]
    assert gguf.get("phi3.attention.sliding_window") == config["sliding_window"]
    assert gguf.get("phi3.rope.scaling.original_context_length") == config["original_max_position_embeddings"]


@pytest.mark.parametrize("spec", [PHI35_MINI, PHI3_MINI_128K_APRIL_2024], ids=["longrope", "su"])
def test_longrope_factors_and_attention_factor_match_transformers(
    spec, shared_phi3_checkpoint, converted_gguf
) -> None:
    checkpoint = shared_phi3_checkpoint(spec)
    hf_config = transformers_phi3_config(checkpoint)
    _, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](hf_config, device=None)
    gguf = read_gguf(converted_gguf(spec, "f32"))
    assert gguf.get("phi3.rope.scaling.attn_factor") == pytest.approx(attention_factor, rel=1e-7)
    config = json.loads((checkpoint / "config.json").read_text())
    for kind in ("long", "short"):
        tensor = gguf.tensor(f"rope_factors_{kind}.weight")
        assert tensor.ggml_type == 0
        np.testing.assert_array_equal(
            gguf.raw_bytes(tensor).view(np.float32), np.float32(config["rope_scaling"][f"{kind}_factor"])
        )


def test_models_without_longrope_get_no_factor_tensors(converted_gguf) -> None:
    gguf = read_gguf(converted_gguf(PHI3_MINI_4K, "f32"))
    assert not any(t.name.startswith("rope_factors") for t in gguf.tensors)
    assert gguf.get("phi3.rope.scaling.attn_factor") is None


@ALL_SPECS
def test_tensors_are_in_llama_cpp_loader_order_with_norms_in_f32(spec, converted_gguf) -> None:
    gguf = read_gguf(converted_gguf(spec, "bf16"))
    names = [t.name for t in gguf.tensors]
    assert names == llama_tensor_order(names)
    assert names[:3] == [
        "output.weight",
        "output_norm.weight",
        *(["rope_factors_long.weight"] if spec.rope_scaling else ["token_embd.weight"]),
    ]
    for tensor in gguf.tensors:
        expected = 0 if tensor.name.endswith("norm.weight") or tensor.name.startswith("rope_factors") else 30
        assert tensor.ggml_type == expected, tensor.name
    qkv = gguf.tensor("blk.0.attn_qkv.weight")
    head_dim = spec.hidden_size // spec.num_attention_heads
    assert qkv.shape == (
        spec.hidden_size,
        (spec.num_attention_heads + 2 * spec.num_key_value_heads) * head_dim,
    )
    assert gguf.tensor("blk.0.ffn_up.weight").shape == (spec.hidden_size, 2 * spec.intermediate_size)


def test_vocabulary_is_padded_with_added_tokens_at_their_ids(shared_phi3_checkpoint, converted_gguf) -> None:
    gguf = read_gguf(converted_gguf(PHI35_MINI, "f32"))
    tokens, types, scores = (gguf.get(f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "scores"))
    assert len(tokens) == len(types) == len(scores) == 32064
    decoder = json.loads((shared_phi3_checkpoint(PHI35_MINI) / "tokenizer_config.json").read_text())[
        "added_tokens_decoder"
    ]
    for token_id, entry in decoder.items():
        assert tokens[int(token_id)] == entry["content"]
        assert types[int(token_id)] == (3 if entry["special"] else 4)
    assert tokens[32010] == "<|user|>" and types[32007] == 3
    assert tokens[32011:] == [f"[PAD{i}]" for i in range(32011, 32064)]
    assert set(types[32011:]) == {5}
    assert types[3:259] == [6] * 256  # byte tokens
    assert gguf.get("tokenizer.ggml.model") == "llama"
    assert gguf.get("tokenizer.ggml.add_bos_token") is False


@ALL_SPECS
def test_end_of_generation_tokens_are_explicit(spec, converted_gguf) -> None:
    gguf = read_gguf(converted_gguf(spec, "f32"))
    assert gguf.get("tokenizer.ggml.eos_token_id") == 32000
    assert gguf.get("tokenizer.ggml.eot_token_id") == 32007
    assert gguf.get("tokenizer.ggml.eom_token_id") == 32001  # <|assistant|>: listed by generation_config
    assert sorted(gguf.get("phiquant.eog_token_ids")) == sorted(spec.generation_eos_token_ids)
    assert gguf.get("tokenizer.chat_template") == spec.tokenizer.chat_template


def test_general_name_steers_llama_cpp_whitespace_rule(converted_gguf) -> None:
    current = read_gguf(converted_gguf(PHI35_MINI, "f32")).get("general.name")
    april = read_gguf(converted_gguf(PHI3_MINI_128K_APRIL_2024, "f32")).get("general.name")
    assert "phi-3" in current.lower()
    assert "phi-3" not in april.lower() and "phi3" not in april.lower()


def test_auto_keeps_the_checkpoint_precision(make_phi3_checkpoint, tmp_path) -> None:
    bf16 = api.convert(make_phi3_checkpoint(PHI3_MINI_4K), tmp_path / "a.gguf")
    f16 = api.convert(make_phi3_checkpoint(PHI3_MINI_4K, dtype="float16"), tmp_path / "b.gguf")
    assert (bf16.outtype, f16.outtype) == ("bf16", "f16")
    assert read_gguf(bf16.path).get("general.file_type") == 32
    assert read_gguf(f16.path).tensor("token_embd.weight").ggml_type == 1


def test_default_output_name_follows_the_hugging_face_convention(
    phi35_mini_checkpoint, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = api.convert(phi35_mini_checkpoint, outtype="f16")
    assert result.path == tmp_path / "Phi-3.5-mini-instruct-F16.gguf"


def test_single_file_and_sharded_checkpoints_give_identical_files(make_phi3_checkpoint, tmp_path) -> None:
    one = api.convert(make_phi3_checkpoint(PHI3_MEDIUM_4K, shards=1), tmp_path / "one.gguf", "f16").path
    two = api.convert(make_phi3_checkpoint(PHI3_MEDIUM_4K, shards=2), tmp_path / "two.gguf", "f16").path
    assert one.read_bytes() == two.read_bytes()


def test_transformers_v5_rope_parameters_convert_like_rope_scaling(make_phi3_checkpoint, tmp_path) -> None:
    """transformers 5.x saves rope_parameters (with rope_theta and the original context inside);
    4.x saves rope_scaling and top-level keys.  Both must give the same file."""
    old = make_phi3_checkpoint(PHI35_MINI, shards=1)
    config = json.loads((old / "config.json").read_text())
    rope = dict(config.pop("rope_scaling"))
    rope_parameters = {
        "long_factor": rope["long_factor"],
        "short_factor": rope["short_factor"],
        "rope_type": "longrope",
        "rope_theta": config.pop("rope_theta"),
        "original_max_position_embeddings": config.pop("original_max_position_embeddings"),
        "partial_rotary_factor": 1.0,
    }
    new = make_phi3_checkpoint(PHI35_MINI, shards=1, config_overrides={})
    (new / "config.json").write_text(json.dumps({**config, "rope_parameters": rope_parameters}))
    a = api.convert(old, tmp_path / "old.gguf", "f16").path
    b = api.convert(new, tmp_path / "new.gguf", "f16").path
    assert a.read_bytes() == b.read_bytes()


def test_attention_factor_formula_is_the_longrope_papers() -> None:
    from phiquant.archs.common import RopeSettings
    from phiquant.archs.phi3 import longrope_attention_factor

    rope = RopeSettings(10000.0, 1.0, "longrope", (1.0,), (1.0,), 4096, None, None)
    assert longrope_attention_factor(rope, 131072) == pytest.approx(
        math.sqrt(1 + math.log(32) / math.log(4096))
    )
    assert longrope_attention_factor(rope, 4096) == 1.0
