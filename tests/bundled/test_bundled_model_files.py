"""The bundled model's files have the structure of microsoft/Phi-3.5-mini-instruct's, only smaller.

The oracle is docs/phi_model_files.md §0.1, §0.2 and §1.1 to §1.4, transcribed here
rather than imported from the training tools, so a tool bug cannot make its own output look right.
"""

from __future__ import annotations

import json
import struct

import pytest

from phiquant.bundled import DEFAULT_MODEL_DIR

# config.json keys of Phi-3.5-mini-instruct in file order (§1.1), less `auto_map`: no remote code ships.
PHI35_CONFIG_KEYS = [
    "_name_or_path",
    "architectures",
    "attention_dropout",
    "bos_token_id",
    "embd_pdrop",
    "eos_token_id",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "model_type",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "original_max_position_embeddings",
    "pad_token_id",
    "resid_pdrop",
    "rms_norm_eps",
    "rope_scaling",
    "rope_theta",
    "sliding_window",
    "tie_word_embeddings",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "attention_bias",
    "vocab_size",
]
# (content, special, rstrip) in Phi-3's order after the SentencePiece pieces, current flags (§0.1).
PHI3_CHAT_TOKENS = [
    ("<|endoftext|>", True, False),
    ("<|assistant|>", True, True),
    ("<|placeholder1|>", True, True),
    ("<|placeholder2|>", True, True),
    ("<|placeholder3|>", True, True),
    ("<|placeholder4|>", True, True),
    ("<|system|>", True, True),
    ("<|end|>", True, True),
    ("<|placeholder5|>", True, True),
    ("<|placeholder6|>", True, True),
    ("<|user|>", True, True),
]
CONTROL_TOKENS = [(0, "<unk>", True, False), (1, "<s>", True, False), (2, "</s>", False, True)]
PHI35_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
    "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
    "{{ eos_token }}{% endif %}"
)
WEIGHT_LIMIT_BYTES = 25_000_000


def load_json(name: str) -> dict:
    return json.loads((DEFAULT_MODEL_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict:
    return load_json("config.json")


@pytest.fixture(scope="module")
def piece_count() -> int:
    return len(load_json("tokenizer.json")["model"]["vocab"])


def safetensors_header(path) -> dict:
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return json.loads(stream.read(length))


def test_config_has_phi35_keys_in_order_and_longrope_scaling(config):
    assert list(config) == PHI35_CONFIG_KEYS
    assert config["architectures"] == ["Phi3ForCausalLM"] and config["model_type"] == "phi3"
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope = config["rope_scaling"]
    assert list(rope) == ["long_factor", "short_factor", "type"] and rope["type"] == "longrope"
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == head_dim // 2
    assert rope["long_factor"] == sorted(rope["long_factor"]) and rope["short_factor"] == sorted(
        rope["short_factor"]
    )
    assert (
        config["original_max_position_embeddings"]
        < config["max_position_embeddings"]
        < config["sliding_window"]
    )
    assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "bfloat16"


def test_hidden_sizes_are_multiples_of_256_and_vocab_is_padded_to_64(config, piece_count):
    assert config["hidden_size"] % 256 == 0 and config["intermediate_size"] % 256 == 0
    token_count = piece_count + len(PHI3_CHAT_TOKENS)
    assert config["vocab_size"] % 64 == 0 and token_count < config["vocab_size"] < token_count + 64


def test_generation_config_ends_on_end_assistant_and_endoftext(config, piece_count):
    generation = load_json("generation_config.json")
    ids = {content: piece_count + offset for offset, (content, _, _) in enumerate(PHI3_CHAT_TOKENS)}
    assert generation["eos_token_id"] == [ids["<|end|>"], ids["<|assistant|>"], ids["<|endoftext|>"]]
    assert (
        config["eos_token_id"] == config["pad_token_id"] == generation["pad_token_id"] == ids["<|endoftext|>"]
    )


def test_chat_tokens_follow_the_sentencepiece_pieces_in_phi3_order_with_phi3_flags(piece_count):
    expected = [(index, content, special, rstrip) for index, content, special, rstrip in CONTROL_TOKENS] + [
        (piece_count + offset, content, special, rstrip)
        for offset, (content, special, rstrip) in enumerate(PHI3_CHAT_TOKENS)
    ]
    added = load_json("tokenizer.json")["added_tokens"]
    assert [(t["id"], t["content"], t["special"], t["rstrip"]) for t in added] == expected
    assert all(
        list(t) == ["id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"]
        for t in added
    )
    decoder = load_json("tokenizer_config.json")["added_tokens_decoder"]
    assert [(int(i), t["content"], t["special"], t["rstrip"]) for i, t in decoder.items()] == expected
    assert load_json("added_tokens.json") == {content: index for index, content, _, _ in expected[3:]}


def test_tokenizer_json_has_the_phi3_sentencepiece_bpe_structure():
    tokenizer = load_json("tokenizer.json")
    assert list(tokenizer) == [
        "version",
        "truncation",
        "padding",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ]
    assert [n["type"] for n in tokenizer["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    assert tokenizer["pre_tokenizer"] is None
    assert tokenizer["post_processor"]["single"] == [{"Sequence": {"id": "A", "type_id": 0}}]
    assert [d["type"] for d in tokenizer["decoder"]["decoders"]] == [
        "Replace",
        "ByteFallback",
        "Fuse",
        "Strip",
    ]
    model = tokenizer["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] is True and model["fuse_unk"] is True
    assert all(isinstance(merge, str) and merge.count(" ") == 1 for merge in model["merges"][:1000])
    vocab = model["vocab"]
    assert [vocab["<unk>"], vocab["<s>"], vocab["</s>"], vocab["<0x00>"], vocab["<0xFF>"]] == [
        0,
        1,
        2,
        3,
        258,
    ]


def test_tokenizer_config_carries_phi35_chat_template_and_flags():
    tokenizer_config = load_json("tokenizer_config.json")
    assert tokenizer_config["chat_template"] == PHI35_CHAT_TEMPLATE
    assert tokenizer_config["add_bos_token"] is False and tokenizer_config["legacy"] is False
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer"
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == (
        "<s>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    special = load_json("special_tokens_map.json")
    assert {key: value["content"] for key, value in special.items()} == {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
    }


def test_weights_are_bf16_phi3_tensors_within_25_mb(config):
    path = DEFAULT_MODEL_DIR / "model.safetensors"
    assert path.stat().st_size <= WEIGHT_LIMIT_BYTES
    header = safetensors_header(path)
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    assert {info["dtype"] for info in tensors.values()} == {"BF16"}
    hidden, intermediate, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    expected = {
        "model.embed_tokens.weight": [vocab, hidden],
        "lm_head.weight": [vocab, hidden],
        "model.norm.weight": [hidden],
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        expected |= {
            prefix + "input_layernorm.weight": [hidden],
            prefix + "self_attn.qkv_proj.weight": [3 * hidden, hidden],  # fused Q, K, V (no GQA here)
            prefix + "self_attn.o_proj.weight": [hidden, hidden],
            prefix + "post_attention_layernorm.weight": [hidden],
            prefix + "mlp.gate_up_proj.weight": [2 * intermediate, hidden],  # fused gate, up
            prefix + "mlp.down_proj.weight": [hidden, intermediate],
        }
    assert {name: info["shape"] for name, info in tensors.items()} == expected
