"""Chats with the BPE-tokenizer families: phiquant's prompts are exactly the Hugging Face template's ids,
and a reply ends on the model's end-of-turn token, which is never printed.

Random weights rarely say the end token, so each checkpoint is steered honestly (fixtures/steering.py:
one row of the output head, solved so greedy decoding says a few tokens and then the end token); the
expected reply is transformers' greedy decoding of the steered files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.runtime.generate import Completion, SamplingOptions, generate
from phiquant.runtime.llama import LoadedModel, LoadOptions
from phiquant.runtime.prompt import PromptTokenizer
from tests.fixtures.bpe_checkpoints import build_bpe_checkpoint
from tests.fixtures.bpe_reference import load_hf_tokenizer
from tests.fixtures.phi2_specs import PHI2
from tests.fixtures.phi4_specs import PHI4, PHI4_MINI, PHI4_MINI_REASONING
from tests.fixtures.steering import NotSteerable, SteeredReply, steer_to_end_token
from tests.oracles import llama_cpp_logits

TEMPLATED = [
    pytest.param(PHI4, id="phi4"),
    pytest.param(PHI4_MINI, id="phi4-mini"),
    pytest.param(PHI4_MINI_REASONING, id="phi4-mini-reasoning"),
]
CONVERSATIONS = [
    [{"role": "user", "content": "Can you introduce .NET"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": " Hi  there\n\nfriend "}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": " 4 "},
        {"role": "user", "content": "\tand 3+3?\n"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "日本語 and emoji 😀"}],
]
TOOLS = '[{"name": "get_weather", "parameters": {"city": {"type": "str"}}}]'
END_OF_TURN = {PHI2: 50256, PHI4: 100265, PHI4_MINI: 200020, PHI4_MINI_REASONING: 200020}
END_TEXT = {50256: "<|endoftext|>", 100265: "<|im_end|>", 200020: "<|end|>"}
GREEDY = SamplingOptions(temperature=0.0, max_tokens=24)
N_CTX = 256  # within every fixture's original context (Phi-4-mini: its short LongRoPE factors)


@pytest.mark.parametrize("spec", TEMPLATED)
@pytest.mark.parametrize(
    "conversation", CONVERSATIONS, ids=["one-turn", "system", "multi-turn", "empty-system"]
)
def test_chat_prompt_ids_equal_apply_chat_template(
    spec, conversation, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    hf = load_hf_tokenizer(shared_bpe_checkpoint(spec))
    expected = hf.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    gguf = converted_bpe_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        assert prompt.render(conversation) == hf.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        assert prompt.chat_tokens(conversation) == list(expected)


@pytest.mark.parametrize("spec", [PHI4_MINI, PHI4_MINI_REASONING], ids=["instruct", "reasoning"])
def test_tool_definitions_in_the_system_turn_tokenize_like_hugging_face(
    spec, shared_bpe_checkpoint, converted_bpe_gguf
) -> None:
    """Phi-4-mini's tools are a JSON string inside the system turn, between <|tool|> and <|/tool|> (tokens
    Hugging Face marks special=false: it matches them in text all the same)."""
    conversation = [
        {"role": "system", "content": "Use tools.", "tools": TOOLS},
        {"role": "user", "content": "Paris?"},
    ]
    hf = load_hf_tokenizer(shared_bpe_checkpoint(spec))
    expected = hf.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    gguf = converted_bpe_gguf(spec, "f16")
    with LoadedModel(gguf) as model:
        ids = PromptTokenizer(model, read_gguf(gguf)).chat_tokens(conversation)
    assert ids == list(expected) and 200023 in ids and 200024 in ids


# Tried in turn until the random model's own first greedy choices win clearly (deterministic per seed).
QUESTIONS = (
    "Name three colours.",
    "Say hello.",
    "Hi there, how are you",
    "Count to five.",
    "Tell me a joke.",
)
# Where each fixture's search starts: the first question its random weights answer clearly on this
# interpreter's vocabulary (the others are still tried in turn, should the fixture change).
FIRST_QUESTION = {PHI4_MINI_REASONING: 2}


def steered_checkpoint(
    spec, directory: Path, cache_dir
) -> tuple[Path, list[dict[str, str]] | str, SteeredReply]:
    checkpoint = build_bpe_checkpoint(directory / "checkpoint", spec, cache_dir=cache_dir)
    tokenizer = load_hf_tokenizer(checkpoint)
    start = FIRST_QUESTION.get(spec, 0)
    for question in QUESTIONS[start:] + QUESTIONS[:start]:
        if tokenizer.chat_template is None:  # phi-2 is a base model: a plain text prompt
            conversation: list[dict[str, str]] | str = question
            prompt = tokenizer.encode(question)
        else:
            conversation = [{"role": "user", "content": question}]
            prompt = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        try:
            return checkpoint, conversation, steer_to_end_token(checkpoint, list(prompt), END_OF_TURN[spec])
        except NotSteerable:
            continue
    raise AssertionError(f"no question gives {spec.name_or_path} a steerable reply")


@pytest.fixture(scope="module")
def steered(module_folders, bpe_vocab_cache):
    made = {}

    def get(spec):
        if spec not in made:
            checkpoint, conversation, reply = steered_checkpoint(
                spec, module_folders.mktemp("steered"), bpe_vocab_cache
            )
            gguf = api.convert(checkpoint, checkpoint.parent / "model-f32.gguf", "f32").path
            made[spec] = (checkpoint, gguf, conversation, reply)
        return made[spec]

    return get


def chat(gguf: Path, conversation, *, reference_precision: bool = True) -> tuple[list[int], Completion, str]:
    with LoadedModel(gguf, LoadOptions(use_extra_bufts=False)) as model:
        prompt = PromptTokenizer(model, read_gguf(gguf))
        ids = (
            prompt.tokenize(conversation)
            if isinstance(conversation, str)
            else prompt.chat_tokens(conversation)
        )
        completion = Completion()
        with model.new_context(N_CTX, reference_precision=reference_precision) as context:
            text = "".join(generate(context, ids, GREEDY, prompt.end_ids, completion=completion))
    return ids, completion, text


@pytest.mark.slow
@pytest.mark.parametrize("spec", [pytest.param(PHI2, id="phi2"), *TEMPLATED])
def test_chat_round_trip_stops_on_the_end_of_turn_token_and_hides_it(spec, steered) -> None:
    _, gguf, conversation, expected = steered(spec)
    assert len(expected.reply) >= 2
    ids, completion, text = chat(gguf, conversation)
    assert ids == list(expected.prompt)
    assert completion.finish_reason == "stop"
    assert completion.tokens == list(expected.reply)
    assert END_TEXT[expected.end_id] not in text
    with LoadedModel(gguf) as model:
        assert text == model.detokenize(list(expected.reply))
    # What stopped it was the end-of-turn token: llama.cpp's own next greedy choice after the reply.
    logits = llama_cpp_logits(gguf, ids + completion.tokens, N_CTX)
    assert int(logits[-1].argmax()) == expected.end_id


@pytest.mark.slow
def test_default_runtime_context_gives_the_same_reply(steered) -> None:
    """The runtime's own context (F16 KV cache) gives the same reply: the steered greedy steps win clearly."""
    _, gguf, conversation, expected = steered(PHI4_MINI)
    _, completion, _ = chat(gguf, conversation, reference_precision=False)
    assert completion.tokens == list(expected.reply) and completion.finish_reason == "stop"
