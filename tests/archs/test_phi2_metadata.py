"""The phi2 GGUF carries what llama.cpp's phi2 loader needs, with values from the checkpoint and the
vocabulary laid out as llama.cpp's own converter lays it out."""

from __future__ import annotations

import json

import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.quant.plan import llama_tensor_order
from tests.fixtures.bpe_reference import load_reference_model, load_tokenizer_json
from tests.fixtures.phi2_specs import ALL_PHI2_SPECS, PHI2, PHI_1_5

ALL_SPECS = pytest.mark.parametrize("spec", list(ALL_PHI2_SPECS.values()), ids=list(ALL_PHI2_SPECS))
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@ALL_SPECS
def test_hyperparameters_come_from_config_json(spec, shared_bpe_checkpoint, converted_bpe_gguf) -> None:
    checkpoint = shared_bpe_checkpoint(spec)
    config = json.loads((checkpoint / "config.json").read_text())
    gguf = read_gguf(converted_bpe_gguf(spec, "f32"))
    attention = load_reference_model(checkpoint).model.layers[0].self_attn
    assert gguf.arch == "phi2"
    assert gguf.get("phi2.context_length") == config["max_position_embeddings"]
    assert gguf.get("phi2.embedding_length") == config["hidden_size"]
    assert gguf.get("phi2.feed_forward_length") == config["intermediate_size"]
    assert gguf.get("phi2.block_count") == config["num_hidden_layers"]
    assert gguf.get("phi2.attention.head_count") == config["num_attention_heads"]
    assert gguf.get("phi2.attention.head_count_kv") == config["num_key_value_heads"]
    assert gguf.get("phi2.attention.layer_norm_epsilon") == pytest.approx(config["layer_norm_eps"])
    assert gguf.get("phi2.attention.layer_norm_rms_epsilon") is None  # LayerNorm, not RMSNorm
    # The rotary dimension transformers' PhiAttention actually uses (phi-2: 32 of 80).
    assert gguf.get("phi2.rope.dimension_count") == attention.rotary_ndims == spec.rotary_dim
    assert gguf.get("phi2.rope.freq_base") == config["rope_theta"]
    assert gguf.get("tokenizer.ggml.add_bos_token") is False


@ALL_SPECS
def test_tensors_keep_every_bias_split_qkv_and_f32_norms(spec, converted_bpe_gguf) -> None:
    gguf = read_gguf(converted_bpe_gguf(spec, "f16"))
    names = [t.name for t in gguf.tensors]
    assert names == llama_tensor_order(names)
    # 7 modules with weight and bias per layer (docs/phi_model_files.md §8.3), plus embedding, final norm
    # (2) and biased head (2).
    assert len(names) == 14 * spec.num_hidden_layers + 5
    assert {
        "output.weight",
        "output.bias",
        "output_norm.weight",
        "output_norm.bias",
        "token_embd.weight",
    } <= set(names)
    for kind in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down", "attn_norm"):
        assert f"blk.0.{kind}.bias" in names
    assert not any("attn_qkv" in n or "ffn_norm" in n or "ffn_gate" in n for n in names)
    for tensor in gguf.tensors:
        expected = 0 if tensor.name.endswith(".bias") or "norm" in tensor.name else 1
        assert tensor.ggml_type == expected, tensor.name
    assert gguf.tensor("blk.0.ffn_up.weight").shape == (spec.hidden_size, spec.intermediate_size)
    assert gguf.tensor("output.bias").shape == (spec.vocab_size,)


def test_vocabulary_is_codegens_padded_to_the_embedding_rows(
    shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(PHI2)
    gguf = read_gguf(converted_bpe_gguf(PHI2, "f32"))
    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type")
    assert gguf.get("tokenizer.ggml.model") == "gpt2"
    assert gguf.get("tokenizer.ggml.pre") == "phi-2"
    assert len(tokens) == len(types) == 51200
    reference = load_tokenizer_json(checkpoint)
    assert tokens[:50295] == [reference.id_to_token(i) for i in range(50295)]
    assert types[:50256] == [NORMAL] * 50256
    assert (tokens[50256], types[50256]) == ("<|endoftext|>", CONTROL)
    # The 38 whitespace tokens (special false): USER_DEFINED, as llama.cpp's converter types them, so
    # llama.cpp matches them in text like Hugging Face does.
    assert tokens[50257] == " " * 31 and tokens[50294] == "\t\t"
    assert set(types[50257:50295]) == {USER_DEFINED}
    assert tokens[50295:] == [f"[PAD{i}]" for i in range(50295, 51200)]
    assert set(types[50295:]) == {UNUSED}
    document = json.loads((checkpoint / "tokenizer.json").read_text())
    assert gguf.get("tokenizer.ggml.merges") == document["model"]["merges"]
    assert len(document["model"]["merges"]) == 50000


def test_special_tokens_and_end_of_generation(converted_bpe_gguf) -> None:
    gguf = read_gguf(converted_bpe_gguf(PHI2, "f32"))
    assert gguf.get("tokenizer.ggml.bos_token_id") == gguf.get("tokenizer.ggml.eos_token_id") == 50256
    assert gguf.get("phiquant.eog_token_ids") == [50256]
    assert gguf.get("tokenizer.chat_template") is None  # phi-2 is a base model: no template
    assert gguf.get("phiquant.tokenizer.rstrip_token_ids") is None
    assert "phi-3" not in gguf.get("general.name").lower()


def test_auto_keeps_float16(converted_bpe_gguf, shared_bpe_checkpoint, tmp_path) -> None:
    result = api.convert(shared_bpe_checkpoint(PHI_1_5), tmp_path / "auto.gguf")
    assert result.outtype == "f16"
    assert read_gguf(result.path).get("general.file_type") == 1


def test_single_file_and_sharded_checkpoints_give_identical_files(make_bpe_checkpoint, tmp_path) -> None:
    one = api.convert(make_bpe_checkpoint(PHI2, shards=1), tmp_path / "one.gguf", "f16").path
    two = api.convert(make_bpe_checkpoint(PHI2, shards=2), tmp_path / "two.gguf", "f16").path
    assert one.read_bytes() == two.read_bytes()
