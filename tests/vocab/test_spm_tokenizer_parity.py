"""llama.cpp tokenizes our GGUF exactly like the original tokenizer does.

Plain text: the oracle is sentencepiece itself on tokenizer.model (and the HF fast tokenizer agrees).
Chat-formatted text: the HF tokenizer, whose added tokens strip whitespace per their rstrip flags;
phiquant picks general.name so that llama.cpp's name-keyed Phi-3 rule reproduces those flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece

from phiquant.runtime.llama import LoadedModel
from tests.fixtures.phi3_specs import PHI3_MINI_128K_APRIL_2024, PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_tokenizer
from tests.fixtures.varied_text import CHAT_TEXTS, PLAIN_TEXTS

FLAVOURS = [
    pytest.param(PHI35_MINI, id="current-rstrip-flags"),
    pytest.param(PHI3_MINI_128K_APRIL_2024, id="april-2024-flags"),
]


def test_there_are_enough_varied_strings() -> None:
    assert len(PLAIN_TEXTS) >= 200 and len(CHAT_TEXTS) >= 25


@pytest.mark.parametrize("spec", FLAVOURS)
def test_plain_text_tokenizes_like_sentencepiece(spec, shared_phi3_checkpoint, converted_gguf) -> None:
    checkpoint: Path = shared_phi3_checkpoint(spec)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))
    with LoadedModel(converted_gguf(spec, "f16")) as model:
        mismatches = [
            text
            for text in PLAIN_TEXTS
            if model.tokenize(text, parse_special=False) != processor.encode(text)
        ]
    assert mismatches == []


@pytest.mark.parametrize("spec", FLAVOURS)
def test_chat_text_tokenizes_like_the_hf_tokenizer(spec, shared_phi3_checkpoint, converted_gguf) -> None:
    hf = load_transformers_tokenizer(shared_phi3_checkpoint(spec))
    with LoadedModel(converted_gguf(spec, "f16")) as model:
        mismatches = [
            (text, hf.encode(text, add_special_tokens=False), model.tokenize(text, parse_special=True))
            for text in CHAT_TEXTS
            if model.tokenize(text, parse_special=True) != hf.encode(text, add_special_tokens=False)
        ]
    assert mismatches == []


def test_special_tokens_come_out_at_their_real_ids(phi35_mini_checkpoint, converted_gguf) -> None:
    with LoadedModel(converted_gguf(PHI35_MINI, "f16")) as model:
        ids = model.tokenize("<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", parse_special=True)
    assert [i for i in ids if i >= 32000] == [32006, 32007, 32010, 32007, 32001]


def test_fine_tune_names_get_the_marker_that_keeps_llama_cpp_like_hf(make_phi3_checkpoint, tmp_path) -> None:
    """A fine-tune called "my-finetune" has Phi-3's rstrip flags but no "phi-3" in its name, so
    phiquant adds the marker llama.cpp keys its whitespace rule on."""
    from phiquant import api

    checkpoint = make_phi3_checkpoint(PHI35_MINI, config_overrides={"_name_or_path": "my-finetune"})
    gguf = api.convert(checkpoint, tmp_path / "m.gguf", "f16").path
    hf = load_transformers_tokenizer(checkpoint)
    text = "<|user|>\nHi<|end|>\n<|assistant|>\n"
    with LoadedModel(gguf) as model:
        assert "phi-3" in (model.metadata_value("general.name") or "").lower()
        assert model.tokenize(text, parse_special=True) == hf.encode(text, add_special_tokens=False)


def test_without_the_name_rule_llama_cpp_keeps_whitespace_the_hf_tokenizer_strips(
    converted_gguf, shared_phi3_checkpoint, tmp_path
) -> None:
    """Documents the one whitespace difference and why phiquant chooses general.name: when the
    name lacks "phi-3"/"phi3" (a renamed file, or one phiquant did not make), llama.cpp keeps the
    whitespace after chat tokens that current Phi-3 tokenizers strip (rstrip=true).  It then
    tokenizes exactly like the HF tokenizer with rstrip off -- the April 2024 flags, same vocabulary."""
    from gguf import GGUFValueType

    from phiquant.ggml import kernels as ggml
    from phiquant.gguf_io import Metadatum
    from phiquant.gguf_source import load_gguf_source
    from phiquant.pipeline import OutputPlan, write_gguf_files
    from phiquant.quant.quantize import quantize_rows

    source = load_gguf_source(converted_gguf(PHI35_MINI, "f16"))
    source.metadata = [
        Metadatum("general.name", "Renamed Model", GGUFValueType.STRING) if m.key == "general.name" else m
        for m in source.metadata
    ]
    renamed = tmp_path / "renamed.gguf"
    plan = OutputPlan(renamed, 1, {t.name: t.base_type for t in source.tensors})
    write_gguf_files(source, [plan], lambda r, t, i, n: quantize_rows(r, t, i), ggml.row_size)
    current = load_transformers_tokenizer(shared_phi3_checkpoint(PHI35_MINI))
    no_rstrip = load_transformers_tokenizer(shared_phi3_checkpoint(PHI3_MINI_128K_APRIL_2024))
    with LoadedModel(renamed) as model:
        ours = {text: model.tokenize(text, parse_special=True) for text in CHAT_TEXTS}
    assert [t for t in CHAT_TEXTS if ours[t] != no_rstrip.encode(t, add_special_tokens=False)] == []
    assert (
        sum(ours[t] != current.encode(t, add_special_tokens=False) for t in CHAT_TEXTS)
        >= len(CHAT_TEXTS) // 3
    )
