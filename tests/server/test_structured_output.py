"""JSON output, log-probabilities and several choices, through the official `openai` client.

Oracles: `jsonschema` validates every grammar-constrained reply against the schema it was given; the
log-probabilities are compared with log_softmax of the logits llama.cpp computes in this test, in a
context of its own, for the same prompt followed by the tokens the server sent.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import openai
import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.batch_engine import lane_sizes
from phiquant.runtime.llama import LoadedModel, LoadOptions
from tests.server.server_process import running_server

QUESTION = [{"role": "user", "content": "Describe a cat as JSON."}]
# Every field bounded (enum, boolean, integer, short string, short array), so a random-weight model
# finishes the object within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "bird"]},
        "indoor": {"type": "boolean"},
        "age": {"type": "integer"},
        "name": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]},
    },
    "required": ["kind", "indoor", "age", "name"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "cat", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def server(phi35_gguf, server_cache):
    with running_server(phi35_gguf, "--ctx", "512", cache=server_cache) as running:
        yield running


def test_json_schema_replies_validate_on_50_seeded_choices(server) -> None:
    client = server.client()
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    replies = [
        client.chat.completions.create(
            model=server.model,
            messages=QUESTION,
            response_format=JSON_SCHEMA_FORMAT,
            max_tokens=160,
            seed=1000 + 5 * request,
            n=5,
            temperature=1.0,
        )  # fmt: skip
        for request in range(10)
    ]
    choices = [choice for reply in replies for choice in reply.choices]
    assert len(choices) == 50
    for choice in choices:
        assert choice.finish_reason == "stop", choice.message.content
        validator.validate(json.loads(choice.message.content))
    assert len({c.message.content for c in choices}) > 25  # seeded differently, not one reply 50 times


def test_json_object_replies_are_json_objects(server, hf_tokenizer) -> None:
    closing = hf_tokenizer.convert_tokens_to_ids("}")  # made likelier, so the random model closes objects
    reply = server.client().chat.completions.create(
        model=server.model, messages=QUESTION, response_format={"type": "json_object"}, max_tokens=200,
        seed=7, n=4, logit_bias={str(closing): 5},
    )  # fmt: skip
    for choice in reply.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # cut by max_tokens: still a prefix the grammar allowed
            assert choice.message.content.lstrip().startswith("{")
    assert any(c.finish_reason == "stop" for c in reply.choices)


def _request_error(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as error:
        call()
    return error.value


def test_schemas_the_grammar_cannot_enforce_are_refused_by_name(server) -> None:
    client = server.client()
    cases = {
        "minimum": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
        "uniqueItems": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "'email'": {"type": "string", "format": "email"},
        "not": {"not": {"type": "null"}},
    }
    for feature, schema in cases.items():
        response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        error = _request_error(
            lambda fmt=response_format: client.chat.completions.create(
                model=server.model, messages=QUESTION, response_format=fmt, max_tokens=4
            )
        )
        assert error.status_code == 400 and error.body["param"] == "response_format.json_schema.schema"
        assert feature in error.body["message"], error.body["message"]
    not_a_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "kitten"}}}
    error = _request_error(
        lambda: client.chat.completions.create(
            model=server.model, messages=QUESTION, response_format=not_a_schema
        )
    )
    assert error.status_code == 400 and error.body["param"] == "response_format.json_schema.schema"
    assert "not a valid JSON Schema" in error.body["message"]
    assert client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=2).choices


def _token_ids_by_bytes(gguf) -> dict[bytes, int]:
    with LoadedModel(gguf, LoadOptions(vocab_only=True)) as model:
        pieces: dict[bytes, list[int]] = {}
        for token in range(model.n_vocab):
            pieces.setdefault(model.token_piece(token, special=True), []).append(token)
    return {piece: ids[0] for piece, ids in pieces.items() if len(ids) == 1}


def _server_sequence_tokens(server, gguf) -> int:
    """The context one short request has in the server: a LongRoPE model (this Phi-3.5 fixture)
    served above its original context runs such requests in sequences of the original size, so
    with the short factors (runtime.batch_engine.lane_sizes), and llama.cpp picks the factor set
    from that size."""
    card = server.client().models.retrieve(server.model)
    n_ctx = card.model_extra["phiquant"]["context_length"]
    original = read_gguf(gguf).get("phi3.rope.scaling.original_context_length")
    return lane_sizes(n_ctx, original)[0]


def _llama_cpp_logits(gguf, prompt, generated, n_ctx) -> np.ndarray:
    """The logits before each generated token, from a context of the test's own with the server's
    settings, fed as a generation feeds it (the prompt in one batch, then one token at a time): batched
    and single-token decodes differ in the last bits, which would blur the comparison."""
    with LoadedModel(gguf) as model, model.new_context(n_ctx) as context:
        rows = [context.decode(list(prompt))[-1]]
        rows += [context.decode([token])[-1] for token in generated[:-1]]
    return np.stack(rows)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def _check_against_llama_cpp(server, gguf, prompt_ids, sent, top_n) -> None:
    """sent: [(token bytes, logprob, [(bytes, logprob)] top)] as the server reported them."""
    ids = _token_ids_by_bytes(gguf)
    generated = [ids[piece] for piece, _, _ in sent]
    n_ctx = _server_sequence_tokens(server, gguf)
    logprobs = _log_softmax(_llama_cpp_logits(gguf, prompt_ids, generated, n_ctx))
    for step, (_, logprob, top) in enumerate(sent):
        row = logprobs[step]
        assert logprob == pytest.approx(row[generated[step]], abs=1e-6)
        best = np.sort(row)[::-1][:top_n]
        assert [lp for _, lp in top] == pytest.approx(best.tolist(), abs=1e-6)
        assert all(row[ids[p]] == pytest.approx(lp, abs=1e-6) for p, lp in top if p in ids)


def test_chat_logprobs_are_log_softmax_of_the_logits(server, phi35_gguf, hf_tokenizer) -> None:
    reply = server.client().chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=6, seed=11, temperature=1.5,
        logprobs=True, top_logprobs=4,
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    assert "".join(bytes(t.bytes).decode() for t in content) == reply.choices[0].message.content
    prompt = hf_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sent = [
        (bytes(t.bytes), t.logprob, [(bytes(a.bytes), a.logprob) for a in t.top_logprobs]) for t in content
    ]
    _check_against_llama_cpp(server, phi35_gguf, list(prompt), sent, 4)


def test_completion_logprobs_streamed_are_log_softmax_of_the_logits(server, phi35_gguf, hf_tokenizer) -> None:
    prompt = hf_tokenizer.encode("The capital of France is")
    chunks = list(
        server.client().completions.create(
            model=server.model, prompt=prompt, max_tokens=5, seed=4, logprobs=3, stream=True
        )
    )
    tokens, token_logprobs, tops = [], [], []
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            token_logprobs += chunk.choices[0].logprobs.token_logprobs
            tops += chunk.choices[0].logprobs.top_logprobs
    assert len(tokens) == 5
    sent = [
        (t.encode(), lp, [(a.encode(), alp) for a, alp in top.items()])
        for t, lp, top in zip(tokens, token_logprobs, tops)
    ]
    _check_against_llama_cpp(server, phi35_gguf, prompt, sent, 3)


def test_tools_on_a_template_without_tools_are_refused_naming_the_model(server) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as error:
        server.client().chat.completions.create(model=server.model, messages=QUESTION, tools=tools)
    assert error.value.body["param"] == "tools" and f"`{server.model}`" in error.value.body["message"]
    assert (
        server.client().chat.completions.create(model=server.model, messages=QUESTION, max_tokens=2).choices
    )


def test_n_choices_are_the_requests_with_seeds_seed_plus_index(server) -> None:
    client = server.client()
    together = client.chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=6, seed=40, n=3
    )
    alone = [
        client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=6, seed=40 + i)
        for i in range(3)
    ]
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.message.content for c in together.choices] == [a.choices[0].message.content for a in alone]
    assert len({c.message.content for c in together.choices}) == 3
    assert together.usage.completion_tokens == 18
    assert together.usage.prompt_tokens == alone[0].usage.prompt_tokens
    streamed = client.chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=6, seed=40, n=3, stream=True
    )
    texts = ["", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in together.choices]
