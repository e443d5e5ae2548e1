"""llama.cpp tokenizes our BPE GGUFs like the original tokenizers do.

Oracles: the `tokenizers` library on tokenizer.json (the file's own definition) and transformers'
AutoTokenizer (what users run); they agree with each other on every string here.  Plain text goes through
llama.cpp's own tokenizer; text holding added tokens goes through phiquant's prompt tokenizer, which
honours the Hugging Face strip flags llama.cpp has no place for.

Two llama.cpp limitations are pinned rather than hidden, so a change in llama.cpp is noticed:
* its `gpt-4o` pre-tokenizer (Phi-4-mini) leaves combining marks (\\p{M}: Devanagari vowel signs,
  decomposed accents) out of its letter classes, where o200k's regex keeps them with their letter
  (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_GPT4O: "(?=[\\p{L}])" lookaheads); phiquant warns at conversion;
* its own tokenizer strips no whitespace around added tokens of a BPE vocabulary (its only strip rule
  is keyed on a Phi-3 general.name, and would fail to load a BPE vocabulary: see the last test).
"""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.prompt import PromptTokenizer, SpecialTokenMatcher
from tests.fixtures.bpe_chat_texts import PHI2_TEXTS_WITH_ADDED_TOKENS, PHI4_CHAT_TEXTS, PHI4_MINI_CHAT_TEXTS
from tests.fixtures.bpe_reference import load_hf_tokenizer, load_tokenizer_json
from tests.fixtures.model_variants import write_variant
from tests.fixtures.phi2_specs import PHI2
from tests.fixtures.phi4_specs import PHI4, PHI4_MINI
from tests.fixtures.varied_text import PLAIN_TEXTS

SPECS = [
    pytest.param(PHI2, id="phi2-codegen"),
    pytest.param(PHI4, id="phi4-cl100k"),
    pytest.param(PHI4_MINI, id="phi4-mini-o200k"),
]
CHAT_TEXTS_BY_SPEC = {
    PHI2: PHI2_TEXTS_WITH_ADDED_TOKENS,
    PHI4: PHI4_CHAT_TEXTS,
    PHI4_MINI: PHI4_MINI_CHAT_TEXTS,
}


def has_combining_mark(text: str) -> bool:
    return any(unicodedata.category(character).startswith("M") for character in text)


def added_token_texts(checkpoint) -> list[str]:
    return [token.content for token in load_tokenizer_json(checkpoint).get_added_tokens_decoder().values()]


def split_texts(spec, checkpoint) -> tuple[list[str], list[str]]:
    """PLAIN_TEXTS without this vocabulary's added tokens (plain) and with them (joins the chat texts)."""
    added = added_token_texts(checkpoint)
    plain = [t for t in PLAIN_TEXTS if not any(a in t for a in added)]
    holding = [t for t in PLAIN_TEXTS if any(a in t for a in added)]
    return plain, holding


def expected_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("spec", SPECS)
def test_there_are_enough_varied_strings(spec, shared_bpe_checkpoint) -> None:
    plain, holding = split_texts(spec, shared_bpe_checkpoint(spec))
    assert len(plain) + len(holding) + len(CHAT_TEXTS_BY_SPEC[spec]) >= 200
    assert len([t for t in plain if not has_combining_mark(t)]) >= 200


@pytest.mark.parametrize("spec", SPECS)
def test_plain_text_tokenizes_like_the_original_tokenizer(
    spec, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(spec)
    reference, hf = load_tokenizer_json(checkpoint), load_hf_tokenizer(checkpoint)
    plain, _ = split_texts(spec, checkpoint)
    if spec is PHI4_MINI:
        plain = [t for t in plain if not has_combining_mark(t)]  # see the next test
    assert [t for t in plain if hf.encode(t, add_special_tokens=False) != expected_ids(reference, t)] == []
    with LoadedModel(converted_bpe_gguf(spec, "f16")) as model:
        mismatches = [
            (t, model.tokenize(t, parse_special=False), expected_ids(reference, t))
            for t in plain
            if model.tokenize(t, parse_special=False) != expected_ids(reference, t)
        ]
    assert mismatches == []


def test_gpt4o_pre_tokenizer_splits_combining_marks_off_their_letters(
    shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    """A llama.cpp limitation, pinned: with o200k's regex a vowel sign stays with its consonant (the
    vocabulary merges them, "ते"); llama.cpp's gpt-4o regex splits it off.  Only text with combining marks
    is affected, and the same strings tokenize identically under the cl100k-style dbrx pre-tokenizer."""
    checkpoint = shared_bpe_checkpoint(PHI4_MINI)
    reference = load_tokenizer_json(checkpoint)
    marked = [t for t in PLAIN_TEXTS if has_combining_mark(t)]
    with LoadedModel(converted_bpe_gguf(PHI4_MINI, "f16")) as model:
        differing = [
            t for t in marked if model.tokenize(t, parse_special=False) != expected_ids(reference, t)
        ]
        hindi = "नमस्ते दुनिया"
        ours = [model.token_text(i) for i in model.tokenize(hindi, parse_special=False)]
    theirs = [reference.id_to_token(i) for i in expected_ids(reference, hindi)]
    assert hindi in differing
    assert "à¤¤à¥ĩ" in theirs and "à¤¤à¥ĩ" not in ours  # "ते": consonant + vowel sign, one piece in HF only
    assert "à¥ĩ" in ours  # the vowel sign on its own
    phi4 = load_tokenizer_json(shared_bpe_checkpoint(PHI4))
    with LoadedModel(converted_bpe_gguf(PHI4, "f16")) as model:
        assert [t for t in marked if model.tokenize(t, parse_special=False) != expected_ids(phi4, t)] == []


def test_conversion_warns_about_the_gpt4o_combining_mark_split(
    converted_bpe_gguf, shared_bpe_checkpoint, tmp_path
) -> None:
    result = api.convert(shared_bpe_checkpoint(PHI4_MINI), tmp_path / "m.gguf", "f16")
    assert any("combining mark" in warning for warning in result.warnings)
    result = api.convert(shared_bpe_checkpoint(PHI4), tmp_path / "p.gguf", "f16")
    assert not any("combining mark" in warning for warning in result.warnings)


def chat_texts(spec, checkpoint) -> list[str]:
    _, holding = split_texts(spec, checkpoint)
    texts = list(CHAT_TEXTS_BY_SPEC[spec]) + holding
    return [t for t in texts if not (spec is PHI4_MINI and has_combining_mark(t))]


@pytest.mark.parametrize("spec", SPECS)
def test_text_with_added_tokens_tokenizes_like_hugging_face(
    spec, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    checkpoint = shared_bpe_checkpoint(spec)
    reference, hf = load_tokenizer_json(checkpoint), load_hf_tokenizer(checkpoint)
    texts = chat_texts(spec, checkpoint)
    assert [t for t in texts if hf.encode(t, add_special_tokens=False) != expected_ids(reference, t)] == []
    gguf = converted_bpe_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert [
            (t, prompt.tokenize(t)) for t in texts if prompt.tokenize(t) != expected_ids(reference, t)
        ] == []


def strips_whitespace(matcher: SpecialTokenMatcher, text: str) -> bool:
    """Whether Hugging Face's lstrip/rstrip flags remove any whitespace from `text`."""
    texts = {token_id: content for content, token_id in matcher.ids.items()}
    rebuilt = "".join(part if isinstance(part, str) else texts[part] for part in matcher.split(text))
    return rebuilt != text


@pytest.mark.parametrize("spec", SPECS)
def test_llama_cpps_own_tokenizer_differs_exactly_where_strip_flags_remove_whitespace(
    spec, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    """Documents what phiquant's prompt tokenizer fixes: phi-4's added tokens strip whitespace on both
    sides, Phi-4-mini's chat tokens on their right, in Hugging Face; llama.cpp's own tokenizer never does
    for these vocabularies, and agrees everywhere else.  phi-2 has no strip flags: full agreement."""
    checkpoint = shared_bpe_checkpoint(spec)
    reference = load_tokenizer_json(checkpoint)
    gguf = converted_bpe_gguf(spec, "f16")
    texts = chat_texts(spec, checkpoint)
    with LoadedModel(gguf) as model:
        matcher = SpecialTokenMatcher.from_gguf(read_gguf(gguf))
        assert matcher is not None
        agrees = {t: model.tokenize(t, parse_special=True) == expected_ids(reference, t) for t in texts}
    stripping = {t: strips_whitespace(matcher, t) for t in texts}
    assert {t for t in texts if not agrees[t]} == {t for t in texts if stripping[t]}
    if spec is PHI2:
        assert not any(stripping.values())
    else:
        assert any(stripping.values())  # the difference is real for phi-4 and Phi-4-mini


def test_a_phi3_marker_in_the_name_would_stop_llama_cpp_loading_a_bpe_vocabulary(
    shared_bpe_checkpoint, make_bpe_checkpoint, tmp_path
) -> None:
    """llama.cpp's Phi-3 whitespace rule looks up "</s>", "<unk>" and "<s>" by text when general.name
    contains "phi3"; a BPE vocabulary has none, and loading fails.  phiquant keeps the marker out."""
    broken = write_variant(
        shared_bpe_checkpoint(PHI4_MINI),
        tmp_path / "named.gguf",
        "F16",
        metadata={"general.name": "Phi3 BPE"},
    )
    loader = "import sys; from phiquant.runtime.llama import LoadedModel; LoadedModel(sys.argv[1]).close()"
    child = subprocess.run(
        [sys.executable, "-c", loader, str(broken)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode != 0 and "could not load" in child.stderr  # llama.cpp: "unordered_map::at"
    finetune = make_bpe_checkpoint(
        PHI4_MINI, config_overrides={"_name_or_path": "my-phi3-style-bpe-finetune"}
    )
    converted = api.convert(finetune, tmp_path / "finetune.gguf", "f16").path
    assert read_gguf(converted).get("general.name") == "my-Phi 3-style-bpe-finetune"
    with LoadedModel(converted) as model:
        assert model.n_vocab == PHI4_MINI.vocab_size
