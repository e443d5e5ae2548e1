"""transformers loads the bundled model, its tokenizers agree, and it has learned English."""

from __future__ import annotations

import json
import math

import pytest
import sentencepiece
import torch
from tokenizers import Tokenizer

from phiquant.bundled import DEFAULT_MODEL_DIR, HELDOUT_TEXT

transformers = pytest.importorskip("transformers")

WINDOW = 512
WINDOWS = 8
# Measured after training: 37.0 over these 8 windows (35.9 over all of heldout.txt, see the model card).
# The threshold leaves room for numeric differences between machines and transformers versions while
# staying far below the ~8000 of a model that learned nothing.
HELDOUT_PERPLEXITY_CEILING = 60.0


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    model = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def sentencepiece_model():
    return sentencepiece.SentencePieceProcessor(model_file=str(DEFAULT_MODEL_DIR / "tokenizer.model"))


@pytest.fixture(scope="module")
def heldout() -> str:
    return HELDOUT_TEXT.read_text(encoding="utf-8")


def test_heldout_perplexity_is_far_below_the_uniform_vocabulary_perplexity(
    model, sentencepiece_model, heldout
):
    ids = sentencepiece_model.encode(heldout[:200_000])
    windows = torch.tensor([ids[index * WINDOW : (index + 1) * WINDOW] for index in range(WINDOWS)])
    with torch.no_grad():
        loss = model(input_ids=windows, labels=windows).loss.item()  # one batch: the mean over all windows
    perplexity = math.exp(loss)
    assert perplexity < HELDOUT_PERPLEXITY_CEILING < model.config.vocab_size / 100


def test_transformers_and_sentencepiece_tokenize_plain_text_alike(tokenizer, sentencepiece_model, heldout):
    # transformers 5 reads tokenizer.json with its own Metaspace pre-tokenizer, which only differs from
    # SentencePiece on text that starts with whitespace; whole paragraphs do not.
    paragraphs = [
        paragraph for paragraph in heldout[:60_000].split("\n\n") if paragraph and not paragraph[0].isspace()
    ]
    assert len(paragraphs) > 50
    for paragraph in paragraphs:
        assert tokenizer(paragraph, add_special_tokens=False)["input_ids"] == sentencepiece_model.encode(
            paragraph
        )


def test_tokenizer_json_reproduces_sentencepiece_exactly(sentencepiece_model, heldout):
    # The BPE merges in tokenizer.json are derived from the SentencePiece scores; the `tokenizers` library
    # (and llama.cpp) must split every byte the same way, code indentation and newlines included.
    fast = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    sample = heldout[:100_000] + "\n   indented ``code``\t and tabs, digits 12345, ünïcödé and 漢字"
    assert fast.encode(sample, add_special_tokens=False).ids == sentencepiece_model.encode(sample)


def test_chat_prompt_places_phi_tokens_at_their_ids(tokenizer):
    ids = json.loads((DEFAULT_MODEL_DIR / "added_tokens.json").read_text(encoding="utf-8"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is a list?<|end|>\n<|assistant|>\n"
    tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tags = [token for token in tokens if token >= min(ids.values())]
    assert tags == [ids["<|system|>"], ids["<|end|>"], ids["<|user|>"], ids["<|end|>"], ids["<|assistant|>"]]
    assert tokens[-1] == ids["<|assistant|>"]  # rstrip: the newline after a tag belongs to the tag


def test_greedy_chat_answer_is_english_and_ends_its_turn(model, tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is a list in Python?"}], add_generation_prompt=True, tokenize=False
    )
    input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=160, do_sample=False)
    answer = output[0, input_ids.shape[1] :].tolist()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end_of_turn in answer, "the model did not close its turn with <|end|>"
    words = tokenizer.decode(answer[: answer.index(end_of_turn)]).split()
    common = {"the", "a", "of", "is", "to", "and", "in", "that", "an", "list", "object", "objects", "are"}
    assert len(words) >= 5 and sum(word.lower() in common for word in words) >= 2
