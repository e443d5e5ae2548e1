"""phi-4 and Phi-4-mini GGUFs carry what llama.cpp's phi3 loader needs, values taken from the checkpoint:
a null sliding window as 0, the partial rotary dimension, LongRoPE factor tensors of rotary_dim / 2 and
transformers' attention factor, no output tensor when tied, and the byte-level BPE vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from phiquant.gguf_io import read_gguf
from tests.fixtures.bpe_reference import load_tokenizer_json
from tests.fixtures.phi4_specs import ALL_PHI4_SPECS, PHI4, PHI4_MINI, PHI4_MINI_REASONING
from tests.fixtures.transformers_reference import transformers_phi3_config

ALL_SPECS = pytest.mark.parametrize("spec", list(ALL_PHI4_SPECS.values()), ids=list(ALL_PHI4_SPECS))
NORMAL, CONTROL, UNUSED = 1, 3, 5


@ALL_SPECS
def test_hyperparameters_come_from_config_json(spec, shared_bpe_checkpoint, converted_bpe_gguf) -> None:
    checkpoint = shared_bpe_checkpoint(spec)
    config = json.loads((checkpoint / "config.json").read_text())
    hf_config = transformers_phi3_config(checkpoint)
    gguf = read_gguf(converted_bpe_gguf(spec, "f32"))
    assert gguf.arch == "phi3"
    assert gguf.get("phi3.context_length") == config["max_position_embeddings"]
    assert gguf.get("phi3.embedding_length") == config["hidden_size"]
    assert gguf.get("phi3.feed_forward_length") == config["intermediate_size"]
    assert gguf.get("phi3.attention.head_count") == config["num_attention_heads"]
    assert gguf.get("phi3.attention.head_count_kv") == config["num_key_value_heads"]
    assert gguf.get("phi3.rope.freq_base") == config["rope_theta"]
    assert gguf.get("phi3.rope.scaling.original_context_length") == config["original_max_position_embeddings"]
    # The rotary dimension transformers uses: head_dim x partial_rotary_factor (Phi-4-mini: 48 of 64).
    rotary_dim = 2 * Phi3RotaryEmbedding(hf_config).inv_freq.shape[0]
    assert gguf.get("phi3.rope.dimension_count") == rotary_dim == spec.rotary_dim
    # phi-4's null window is 0 ("no sliding window" to llama.cpp, PR #10817); Phi-4-mini keeps 262144.
    assert gguf.get("phi3.attention.sliding_window") == (config["sliding_window"] or 0)
    assert gguf.get("tokenizer.ggml.add_bos_token") is False


def test_phi4_has_no_longrope_and_an_untied_head(converted_bpe_gguf) -> None:
    gguf = read_gguf(converted_bpe_gguf(PHI4, "bf16"))
    names = [t.name for t in gguf.tensors]
    assert "output.weight" in names and not any(n.startswith("rope_factors") for n in names)
    assert gguf.get("phi3.rope.scaling.attn_factor") is None
    assert len(names) == 6 * PHI4.num_hidden_layers + 3


@pytest.mark.parametrize("spec", [PHI4_MINI, PHI4_MINI_REASONING], ids=["instruct", "reasoning"])
def test_phi4_mini_is_tied_with_rotary_dim_longrope_factors(
    spec, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(spec)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["rope_scaling"]["long_factor"][0] == 1 and isinstance(
        config["rope_scaling"]["long_factor"][0], int
    )
    gguf = read_gguf(converted_bpe_gguf(spec, "f32"))
    names = [t.name for t in gguf.tensors]
    assert "output.weight" not in names  # llama.cpp duplicates token_embd (tied)
    assert len(names) == 6 * spec.num_hidden_layers + 2 + 2
    for kind in ("long", "short"):
        tensor = gguf.tensor(f"rope_factors_{kind}.weight")
        assert tensor.shape == (spec.rotary_dim // 2,)
        np.testing.assert_array_equal(
            gguf.raw_bytes(tensor).view(np.float32), np.float32(config["rope_scaling"][f"{kind}_factor"])
        )
    _, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](transformers_phi3_config(checkpoint), device=None)
    assert gguf.get("phi3.rope.scaling.attn_factor") == pytest.approx(attention_factor, rel=1e-7)


def test_phi4_vocabulary_fills_all_rows_with_lstrip_and_rstrip_flags(
    shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(PHI4)
    gguf = read_gguf(converted_bpe_gguf(PHI4, "f32"))
    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type")
    assert (gguf.get("tokenizer.ggml.model"), gguf.get("tokenizer.ggml.pre")) == ("gpt2", "dbrx")
    assert len(tokens) == 100352 and not any(t.startswith("[PAD") for t in tokens)  # no padding gap
    reference = load_tokenizer_json(checkpoint)
    assert tokens == [reference.id_to_token(i) for i in range(100352)]
    assert types[:100256] == [NORMAL] * 100256 and set(types[100256:]) == {CONTROL}
    assert (tokens[100264], tokens[100265], tokens[100266], tokens[100349]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_sep|>",
        "<|dummy_85|>",
    )
    every_added = list(range(100256, 100352))
    assert gguf.get("phiquant.tokenizer.lstrip_token_ids") == every_added
    assert gguf.get("phiquant.tokenizer.rstrip_token_ids") == every_added
    assert gguf.get("tokenizer.ggml.eos_token_id") == gguf.get("tokenizer.ggml.eot_token_id") == 100265
    assert gguf.get("tokenizer.ggml.bos_token_id") == 100257
    assert gguf.get("tokenizer.ggml.padding_token_id") == 100349
    assert gguf.get("phiquant.eog_token_ids") == [100265]
    assert gguf.get("tokenizer.chat_template") == PHI4.chat_template
    assert len(gguf.get("tokenizer.ggml.merges")) == 100000


def test_phi4_mini_vocabulary_is_padded_and_types_tool_tokens_like_llama_cpp(
    shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(PHI4_MINI)
    gguf = read_gguf(converted_bpe_gguf(PHI4_MINI, "f32"))
    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type")
    assert (gguf.get("tokenizer.ggml.model"), gguf.get("tokenizer.ggml.pre")) == ("gpt2", "gpt-4o")
    assert len(tokens) == 200064
    reference = load_tokenizer_json(checkpoint)
    assert tokens[:200029] == [reference.id_to_token(i) for i in range(200029)]
    assert tokens[200029:] == [f"[PAD{i}]" for i in range(200029, 200064)] and set(types[200029:]) == {UNUSED}
    # Reserved names in the BPE vocabulary itself stay NORMAL; added tokens are CONTROL, the tool tokens
    # too although Hugging Face marks them special=false (llama.cpp's converter: "<|...|>" looks special).
    assert (tokens[199998], types[199998], tokens[200010], types[200010]) == (
        "<|endoftext98|>",
        NORMAL,
        "<|endoftext10|>",
        NORMAL,
    )
    assert tokens[200023] == "<|tool|>" and types[200023] == CONTROL
    assert types[199999] == types[200020] == CONTROL
    assert gguf.get("phiquant.tokenizer.rstrip_token_ids") == list(range(200019, 200029))
    assert gguf.get("phiquant.tokenizer.lstrip_token_ids") is None
    assert gguf.get("tokenizer.ggml.eos_token_id") == 199999
    assert gguf.get("tokenizer.ggml.eot_token_id") == 200020
    assert gguf.get("phiquant.eog_token_ids") == [200020, 199999]
    assert len(gguf.get("tokenizer.ggml.merges")) == 199742


def test_reasoning_template_comes_from_chat_template_jinja_and_pair_merges_read_the_same(
    shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(PHI4_MINI_REASONING)
    assert "chat_template" not in json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert isinstance(json.loads((checkpoint / "tokenizer.json").read_text())["model"]["merges"][0], list)
    reasoning = read_gguf(converted_bpe_gguf(PHI4_MINI_REASONING, "f32"))
    instruct = read_gguf(converted_bpe_gguf(PHI4_MINI, "f32"))
    assert reasoning.get("tokenizer.chat_template") == (checkpoint / "chat_template.jinja").read_text()
    assert reasoning.get("tokenizer.ggml.merges") == instruct.get("tokenizer.ggml.merges")


@ALL_SPECS
def test_names_never_trigger_llama_cpps_phi3_rule(spec, converted_bpe_gguf) -> None:
    name = read_gguf(converted_bpe_gguf(spec, "f32")).get("general.name").lower()
    assert "phi-3" not in name and "phi3" not in name
