"""Generation stops where the model stops, never shows special tokens, and is reproducible.

Random-weight fixtures almost never pick an end token by themselves, so the tests that need one make
it likely with a logit bias (an OpenAI request parameter and a llama.cpp sampler): the model then
really samples the end token among the others, and the runtime must notice it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.generate import Completion, SamplingOptions, generate
from phiquant.runtime.llama import LoadedModel, LoadOptions
from phiquant.runtime.prompt import PromptTokenizer
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.oracles import normalised_mse

# Phi-3.5's generation_config eos list (docs/phi_model_files.md §1.2): <|end|>, <|assistant|>, <|endoftext|>.
PHI35_END_IDS = {32007: "<|end|>", 32001: "<|assistant|>", 32000: "<|endoftext|>"}
USER_ID = 32010  # <|user|>: a control token that ends nothing
BIAS = 2.5  # enough for the end token to come after a few dozen tokens on the random fixture
SPECIAL_TEXTS = ("<|end|>", "<|assistant|>", "<|endoftext|>", "<|user|>", "<|system|>", "</s>")


@pytest.fixture(scope="module")
def phi35(converted_gguf):
    path = converted_gguf(PHI35_MINI, "f16")
    with LoadedModel(path, LoadOptions(use_extra_bufts=False)) as model:
        prompt = PromptTokenizer(model, read_gguf(path))
        with model.new_context(256, n_threads=1) as context:
            yield model, prompt, context


def run(context, prompt_tokens, end_ids, **options) -> Completion:
    completion = Completion()
    pieces = list(
        generate(context, prompt_tokens, SamplingOptions(**options), end_ids, completion=completion)
    )
    assert "".join(pieces) == completion.text
    return completion


def chat(prompt: PromptTokenizer, text: str) -> list[int]:
    return prompt.chat_tokens([{"role": "user", "content": text}])


def test_end_ids_are_every_generation_config_eos_id(phi35) -> None:
    _, prompt, _ = phi35
    assert set(PHI35_END_IDS) <= prompt.end_ids


@pytest.mark.parametrize("end_id", list(PHI35_END_IDS), ids=list(PHI35_END_IDS.values()))
def test_generation_stops_on_each_end_token_and_never_shows_it(phi35, end_id) -> None:
    _, prompt, context = phi35
    runs = [
        run(
            context,
            chat(prompt, "Hello there"),
            prompt.end_ids,
            seed=seed,
            max_tokens=120,
            logit_bias=((end_id, BIAS),),
        )
        for seed in range(10)
    ]
    stopped = [c for c in runs if c.finish_reason == "stop"]
    assert stopped and all(c.end_token == end_id for c in stopped)
    assert any(c.completion_tokens >= 3 for c in stopped), "the end token should also come after some text"
    for completion in runs:
        assert end_id not in completion.tokens
        assert not any(special in completion.text for special in SPECIAL_TEXTS)


def test_control_tokens_inside_an_answer_are_not_printed(phi35) -> None:
    model, prompt, context = phi35
    runs = [
        run(
            context,
            chat(prompt, "Hi"),
            prompt.end_ids,
            seed=seed,
            max_tokens=100,
            logit_bias=((USER_ID, BIAS),),
        )
        for seed in range(5)
    ]
    assert any(USER_ID in completion.tokens for completion in runs)
    for completion in runs:
        assert "<|user|>" not in completion.text
        assert completion.text == model.detokenize(completion.tokens, special=False)


def test_the_same_seed_gives_the_same_text_and_another_seed_another(phi35) -> None:
    _, prompt, context = phi35
    tokens = chat(prompt, "Tell me a story")
    first = run(context, tokens, prompt.end_ids, seed=7, max_tokens=40)
    assert run(context, tokens, prompt.end_ids, seed=7, max_tokens=40).text == first.text
    assert run(context, tokens, prompt.end_ids, seed=8, max_tokens=40).text != first.text
    greedy = run(context, tokens, prompt.end_ids, temperature=0, max_tokens=40, seed=1)
    assert run(context, tokens, prompt.end_ids, temperature=0, max_tokens=40, seed=2).text == greedy.text


def test_unseeded_runs_report_the_seed_that_reproduces_them(phi35) -> None:
    _, prompt, context = phi35
    tokens = chat(prompt, "Tell me a story")
    first = run(context, tokens, prompt.end_ids, max_tokens=30)
    assert run(context, tokens, prompt.end_ids, seed=first.seed, max_tokens=30).text == first.text


def test_stop_string_cuts_the_text_where_it_starts_even_across_tokens(phi35) -> None:
    model, prompt, context = phi35
    tokens = chat(prompt, "Count for me")
    free = run(context, tokens, prompt.end_ids, temperature=0, max_tokens=60)
    # A stop string that begins inside the third token's text and ends inside the fourth.
    start = len(model.detokenize(free.tokens[:2])) + 1
    end = len(model.detokenize(free.tokens[:3])) + 2
    stop = free.text[start:end]
    stopped = run(context, tokens, prompt.end_ids, temperature=0, max_tokens=60, stop=(stop,))
    assert stopped.finish_reason == "stop" and stopped.end_token is None
    assert stopped.text == free.text[: free.text.index(stop)]


def test_max_tokens_ends_with_length(phi35) -> None:
    _, prompt, context = phi35
    completion = run(context, chat(prompt, "Go on"), prompt.end_ids, seed=1, max_tokens=5)
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 5)


def test_cancel_stops_at_the_next_token(phi35) -> None:
    _, prompt, context = phi35
    cancel = threading.Event()
    completion = Completion()
    options = SamplingOptions(seed=1, max_tokens=200)
    for index, _ in enumerate(
        generate(context, chat(prompt, "Go"), options, prompt.end_ids, cancel=cancel, completion=completion)
    ):
        if index == 2:
            cancel.set()
    assert completion.finish_reason == "cancelled"
    assert completion.completion_tokens == 3


def test_deadline_ends_with_time(phi35) -> None:
    _, prompt, context = phi35
    completion = Completion()
    options = SamplingOptions(seed=1, max_tokens=200)
    list(generate(context, chat(prompt, "Go"), options, prompt.end_ids, completion=completion, deadline=0.0))
    assert completion.finish_reason == "time" and completion.completion_tokens == 0


def test_a_fresh_generation_ignores_what_the_context_held(phi35) -> None:
    _, prompt, context = phi35
    tokens = chat(prompt, "Fresh start")
    alone = run(context, tokens, prompt.end_ids, seed=3, max_tokens=20)
    run(context, chat(prompt, "Something else entirely"), prompt.end_ids, seed=9, max_tokens=20)
    assert run(context, tokens, prompt.end_ids, seed=3, max_tokens=20).text == alone.text


def test_reused_prefix_gives_the_logits_of_a_fresh_evaluation(converted_gguf) -> None:
    """The chat keeps earlier turns in the KV cache; the logits after the new turn must be those of
    evaluating the whole conversation from scratch (llama.cpp is the oracle)."""
    path = converted_gguf(PHI35_MINI, "f16")
    first = [(i * 7919) % 32000 + 1 for i in range(40)]
    second = first[:30] + [(i * 104729) % 32000 + 1 for i in range(25)]
    with (
        LoadedModel(path, LoadOptions(use_extra_bufts=False)) as model,
        model.new_context(256) as reused,
        model.new_context(256) as fresh,
    ):
        reused.decode(first)
        reused.keep_prefix(30)
        assert reused.tokens == first[:30]
        reused_logits = reused.decode(second[30:])[-1]
        fresh_logits = fresh.decode(second)[-1]
    assert normalised_mse(reused_logits[None], fresh_logits[None]) < 1e-5
    assert int(np.argmax(reused_logits)) == int(np.argmax(fresh_logits))


def test_options_out_of_range_are_refused() -> None:
    from phiquant.errors import PhiquantError

    for bad in (
        {"temperature": -1},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"seed": -1},
        {"logit_bias": ((1, 101.0),)},
    ):
        with pytest.raises(PhiquantError):
            SamplingOptions(**bad).validate(32064)
    with pytest.raises(PhiquantError, match="token 40000"):
        SamplingOptions(logit_bias=((40000, 1.0),)).validate(32064)
