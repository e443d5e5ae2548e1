"""Fine-tunes of Phi-3.5 and Phi-3.5-MoE convert to the model their base converts to.

Variants, each checked against an oracle (the base model's GGUF, byte for byte where nothing real
differs; the fine-tune's own Hugging Face tokenizer; transformers' logits):
* saved by transformers 5 (config with `rope_parameters`, `dtype`, `PhimoeForCausalLM`, stacked experts,
  tokenizer.json without tokenizer.model) against the transformers 4.x files;
* `rope_scaling.type: "su"` (LongRoPE's first name);
* `architectures` spelled differently: `PhimoeForCausalLM` (transformers' class), `PhiMoeForCausalLM`
  and other capitalisations, which phiquant matches case-insensitively (archs/__init__.py);
* no `tokenizer_class` in tokenizer_config.json;
* added tokens at ids 32011+ (inside the 32064 embedding rows), and one beyond them (refused).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AddedToken, AutoTokenizer

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.prompt import PromptTokenizer
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.finetune_variants import (
    add_tokens_like_transformers_4,
    edit_json,
    resave_with_transformers,
)
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.phi_checkpoints import build_phi3_checkpoint
from tests.fixtures.phimoe_checkpoints import build_phimoe_checkpoint
from tests.fixtures.phimoe_reference import load_phimoe_model
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.fixtures.varied_text import CHAT_TEXTS, PLAIN_TEXTS
from tests.oracles import llama_cpp_logits, normalised_mse, transformers_logits

FAMILIES = {"phi35_mini": PHI35_MINI, "phi35_moe": PHI35_MOE}
BY_FAMILY = pytest.mark.parametrize("family", list(FAMILIES))


@pytest.fixture(scope="module")
def base_checkpoints(tmp_path_factory, phi3_vocab) -> dict[str, Path]:
    """Two-layer builds of each base model, in folders named like the models (general.name falls back
    to the folder name when a config has no _name_or_path, as transformers 5's configs do not)."""
    root = tmp_path_factory.mktemp("base")
    return {
        "phi35_mini": build_phi3_checkpoint(
            root / PHI35_MINI.name_or_path, PHI35_MINI, num_hidden_layers=2, vocab=phi3_vocab
        ),
        "phi35_moe": build_phimoe_checkpoint(
            root / PHI35_MOE.name_or_path, PHI35_MOE, num_hidden_layers=2, vocab=phi3_vocab
        ),
    }


@pytest.fixture(scope="module")
def base_ggufs(base_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base-gguf")
    return {
        name: api.convert(path, root / f"{name}.gguf", "bf16").path for name, path in base_checkpoints.items()
    }


@pytest.fixture
def variant(base_checkpoints, tmp_path):
    """`variant(family)` -> a writable copy of the base checkpoint, in a folder of the same name."""

    def copy(family: str) -> Path:
        source = base_checkpoints[family]
        return Path(shutil.copytree(source, tmp_path / "variant" / source.name))

    return copy


def convert(checkpoint: Path, tmp_path: Path) -> Path:
    return api.convert(checkpoint, tmp_path / "variant.gguf", "bf16").path


def differences(ours: Path, base: Path) -> set[str]:
    """Metadata keys and tensor names whose values differ between two GGUF files."""
    a, b = read_gguf(ours), read_gguf(base)
    keys = {m.key for m in a.metadata} | {m.key for m in b.metadata}
    changed = {key for key in keys if a.get(key) != b.get(key)}
    names = {t.name for t in a.tensors} | {t.name for t in b.tensors}
    for name in names:
        if (
            name not in {t.name for t in a.tensors}
            or name not in {t.name for t in b.tensors}
            or not np.array_equal(a.raw_bytes(a.tensor(name)), b.raw_bytes(b.tensor(name)))
        ):
            changed.add(name)
    return changed


def assert_tokenizes_like(gguf: Path, checkpoint: Path, extra: list[str] = ()) -> None:
    hf = AutoTokenizer.from_pretrained(checkpoint)
    with LoadedModel(gguf) as model:
        plain = [
            t
            for t in PLAIN_TEXTS
            if model.tokenize(t, parse_special=False) != hf.encode(t, add_special_tokens=False)
        ]
        chat = [
            t
            for t in [*CHAT_TEXTS, *extra]
            if model.tokenize(t, parse_special=True) != hf.encode(t, add_special_tokens=False)
        ]
        assert model.tokenize("Hello", add_special=True) == hf.encode("Hello")  # BOS as the tokenizer adds it
    assert (plain, chat) == ([], [])


# ---- saved by transformers 5 ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "original_format"),
    [("phi35_mini", True), ("phi35_moe", True), ("phi35_moe", False)],
    ids=["phi35_mini", "phi35_moe", "phi35_moe-stacked-experts"],
)
def test_model_saved_by_transformers_5_converts_to_the_same_gguf(
    family, original_format, base_checkpoints, base_ggufs, tmp_path
) -> None:
    base = base_checkpoints[family]
    resaved = resave_with_transformers(base, tmp_path / "ft" / base.name, original_format=original_format)
    config = json.loads((resaved / "config.json").read_text())
    assert "rope_parameters" in config and "rope_scaling" not in config  # the 5.x layout
    assert not (resaved / "tokenizer.model").exists()
    gguf = convert(resaved, tmp_path)
    # Only the piece scores differ: without tokenizer.model they are rebuilt from tokenizer.json's merges.
    assert differences(gguf, base_ggufs[family]) == {"tokenizer.ggml.scores"}
    assert_tokenizes_like(gguf, resaved)
    # With the base model's tokenizer.model beside it, the file is the base model's, byte for byte.
    shutil.copy(base / "tokenizer.model", resaved / "tokenizer.model")
    assert convert(resaved, tmp_path).read_bytes() == base_ggufs[family].read_bytes()


# ---- config.json spellings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "spelling"),
    [
        ("phi35_moe", "PhimoeForCausalLM"),
        ("phi35_moe", "PhiMoeForCausalLM"),
        ("phi35_moe", "phimoeforcausallm"),
        ("phi35_mini", "PHI3ForCausalLM"),
    ],
)
def test_architecture_spellings_name_the_same_model(family, spelling, variant, base_ggufs, tmp_path) -> None:
    checkpoint = variant(family)
    edit_json(checkpoint / "config.json", lambda c: c.update(architectures=[spelling]))
    assert convert(checkpoint, tmp_path).read_bytes() == base_ggufs[family].read_bytes()


@BY_FAMILY
def test_su_rope_type_is_longrope(family, variant, base_ggufs, tmp_path) -> None:
    checkpoint = variant(family)
    edit_json(checkpoint / "config.json", lambda c: c["rope_scaling"].update(type="su"))
    assert convert(checkpoint, tmp_path).read_bytes() == base_ggufs[family].read_bytes()


@BY_FAMILY
def test_missing_tokenizer_class_changes_nothing(family, variant, base_ggufs, tmp_path) -> None:
    checkpoint = variant(family)
    edit_json(checkpoint / "tokenizer_config.json", lambda c: c.pop("tokenizer_class"))
    assert convert(checkpoint, tmp_path).read_bytes() == base_ggufs[family].read_bytes()


# ---- added tokens --------------------------------------------------------------------------------------

# (id, text, special); the plain one is saved with normalized: false (see the known-difference test)
NEW_TOKENS = [(32011, "<|tool_call|>", True), (32012, "<|/tool_call|>", True), (32013, "<think>", False)]
# Texts using the new tokens: without whitespace right after them (llama.cpp's own tokenizer agrees with
# Hugging Face), and with it (only per-token strip flags get that right; see the test below).
TIGHT_TEXTS = [
    '<|user|>\nWeather?<|end|>\n<|assistant|>\n<|tool_call|>{"city": "Oslo"}<|/tool_call|><|end|>\n',
    "<think>step one</think> done",
    "a<think>b",
]
SPACED_TEXTS = ["a<think>b <think> c\n<think>\n", "<|tool_call|> spaced <|/tool_call|>\t<think>"]


def assert_prompt_tokenizer_matches(gguf: Path, checkpoint: Path, texts: list[str]) -> None:
    hf = AutoTokenizer.from_pretrained(checkpoint)
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert [t for t in texts if prompt.tokenize(t) != hf.encode(t, add_special_tokens=False)] == []


@pytest.mark.slow
@BY_FAMILY
def test_added_tokens_inside_the_padded_rows_get_their_ids_and_types(family, variant, tmp_path) -> None:
    checkpoint = variant(family)
    add_tokens_like_transformers_4(checkpoint, NEW_TOKENS)
    gguf_path = convert(checkpoint, tmp_path)
    gguf = read_gguf(gguf_path)
    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type")
    # llama.cpp's converter: special -> CONTROL (3), other added tokens -> USER_DEFINED (4)
    assert [(tokens[i], types[i]) for i, _, _ in NEW_TOKENS] == [
        ("<|tool_call|>", 3),
        ("<|/tool_call|>", 3),
        ("<think>", 4),
    ]
    assert tokens[32014:] == [f"[PAD{i}]" for i in range(32014, 32064)]
    assert_tokenizes_like(gguf_path, checkpoint, TIGHT_TEXTS)
    assert_prompt_tokenizer_matches(gguf_path, checkpoint, TIGHT_TEXTS + SPACED_TEXTS)


@pytest.mark.slow
def test_added_tokens_saved_by_transformers_5_work_too(variant, tmp_path) -> None:
    """transformers 5's tokenizer.add_tokens + save_pretrained: the new tokens are only in
    tokenizer.json (no added_tokens_decoder, a stale added_tokens.json), and the model still runs."""
    checkpoint = variant("phi35_moe")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens(["<|tool_call|>", "<|/tool_call|>"], special_tokens=True)
    tokenizer.add_tokens([AddedToken("<think>", normalized=False)])
    tokenizer.save_pretrained(checkpoint)
    assert "added_tokens_decoder" not in json.loads((checkpoint / "tokenizer_config.json").read_text())
    gguf = convert(checkpoint, tmp_path)
    assert read_gguf(gguf).get("tokenizer.ggml.tokens")[32011:32014] == [
        "<|tool_call|>",
        "<|/tool_call|>",
        "<think>",
    ]
    assert_tokenizes_like(gguf, checkpoint, TIGHT_TEXTS)
    assert_prompt_tokenizer_matches(gguf, checkpoint, TIGHT_TEXTS + SPACED_TEXTS)
    tokens = AutoTokenizer.from_pretrained(checkpoint).encode(TIGHT_TEXTS[0], add_special_tokens=False)
    reference = transformers_logits(load_phimoe_model(checkpoint, router="softmax"), tokens)
    ours = llama_cpp_logits(api.convert(checkpoint, tmp_path / "f32.gguf", "f32").path, tokens, 256)
    assert normalised_mse(ours, reference) < 1e-4


def test_new_tokens_that_keep_whitespace_are_reported_for_llama_cpps_tokenizer(variant, tmp_path) -> None:
    """The Phi-3 tokens strip the whitespace after them, the added ones do not; llama.cpp applies one
    rule to every added token (by general.name), so its own tokenizer differs after the new ones while
    phiquant's prompt tokenizer follows each token's flag.  Conversion says so."""
    checkpoint = variant("phi35_moe")
    add_tokens_like_transformers_4(checkpoint, NEW_TOKENS)
    result = api.convert(checkpoint, tmp_path / "mixed.gguf", "bf16")
    assert any("<|tool_call|>" in w and "whitespace" in w for w in result.warnings)
    hf = AutoTokenizer.from_pretrained(checkpoint)
    with LoadedModel(result.path) as model:
        assert all(
            model.tokenize(t, parse_special=True) != hf.encode(t, add_special_tokens=False)
            for t in SPACED_TEXTS
        )


def test_normalized_added_tokens_are_a_known_difference_and_say_so(variant, tmp_path) -> None:
    """`add_tokens(["<think>"])` marks the token normalized: Hugging Face then matches it in the
    normalised text, where SentencePiece's "▁" is glued to it (only at the start or after a space),
    while llama.cpp matches raw text anywhere.  No GGUF key expresses this, so conversion warns; this
    test pins the difference so a change on either side is noticed."""
    checkpoint = variant("phi35_moe")
    add_tokens_like_transformers_4(checkpoint, [(32011, "<think>", False)], normalized=True)
    result = api.convert(checkpoint, tmp_path / "normalized.gguf", "bf16")
    assert any("<think>" in w and "normalized" in w for w in result.warnings)
    hf = AutoTokenizer.from_pretrained(checkpoint)
    with LoadedModel(result.path) as model:
        assert model.tokenize("x <think>", parse_special=True) != hf.encode(
            "x <think>", add_special_tokens=False
        )
        assert model.tokenize("a<think>b", parse_special=True) != hf.encode(
            "a<think>b", add_special_tokens=False
        )
    assert 32011 not in hf.encode("a<think>b", add_special_tokens=False)  # HF: no match inside a word


def test_added_token_beyond_the_embedding_is_refused(variant, tmp_path) -> None:
    checkpoint = variant("phi35_moe")
    add_tokens_like_transformers_4(checkpoint, [(32064, "<|extra|>", True)])
    result = run_phiquant("convert", checkpoint, "-o", tmp_path / "out.gguf")
    assert_one_line_error(result, "<|extra|>", "32064", "vocab_size 32064", "resize the embeddings")
    assert not (tmp_path / "out.gguf").exists()
