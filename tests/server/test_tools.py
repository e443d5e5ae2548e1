"""Tools on the Phi-4-mini fixture through the official `openai` client: a call is parsed into
`tool_calls`, the tool's answer is accepted back, and a forced call is always a valid one.

A random-weight model does not decide to call tools by itself, so calls are forced with `tool_choice`
(a grammar in llama.cpp's sampler); the parser's reading of the model's own format is proven on exact
strings in tests/runtime/test_reply_parser.py.  The prompts the server builds are checked against the
Hugging Face tokenizer's rendering of Phi-4-mini's template.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.fixtures.bpe_reference import load_hf_tokenizer
from tests.fixtures.phi4_specs import PHI4_MINI
from tests.server.server_process import running_server

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "London"]},
            "celsius": {"type": "boolean"},
        },
        "required": ["city", "celsius"],
    },
}
CLOCK = {
    "name": "get_time",
    "description": "Local time",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]}}, "required": ["zone"]},
}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": CLOCK}]
SCHEMAS = {f["name"]: f["parameters"] for f in (WEATHER, CLOCK)}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def phi4_mini_gguf(converted_bpe_gguf):
    return converted_bpe_gguf(PHI4_MINI, "f16")


@pytest.fixture(scope="module")
def server(phi4_mini_gguf, server_cache):
    with running_server(phi4_mini_gguf, "--ctx", "512", cache=server_cache) as running:
        yield running


def _valid_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_tool_round_trip(server, shared_bpe_checkpoint) -> None:
    client = server.client()
    first = client.chat.completions.create(
        model=server.model, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        max_tokens=120, seed=1,
    )  # fmt: skip
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    _valid_call(call)
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    final = client.chat.completions.create(
        model=server.model, messages=history, tools=TOOLS, max_tokens=6, seed=2
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert isinstance(final.choices[0].message.content, str) and not final.choices[0].message.tool_calls
    # The prompt holds the tools in the system turn, the call as Phi-4-mini writes it and the tool's
    # answer as a <|tool_response|> turn: what Hugging Face's template makes of the same conversation.
    hf = load_hf_tokenizer(shared_bpe_checkpoint(PHI4_MINI))
    arguments = json.loads(call.function.arguments)
    conversation = [
        {"role": "system", "content": "", "tools": json.dumps([WEATHER, CLOCK], ensure_ascii=False)},
        *ASK,
        {
            "role": "assistant",
            "content": "<|tool_call|>"
            + json.dumps([{"name": call.function.name, "arguments": arguments}], ensure_ascii=False)
            + "<|/tool_call|>",
        },
        {"role": "tool_response", "content": '{"sky": "clear"}'},
    ]
    expected = hf.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert final.usage.prompt_tokens == len(expected)


def test_streamed_tool_call_arrives_as_deltas_equal_to_the_whole_answer(server) -> None:
    client = server.client()
    request = {
        "model": server.model, "messages": ASK, "tools": TOOLS, "max_tokens": 120, "seed": 5,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "parallel_tool_calls": False,
    }  # fmt: skip
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta_call.index, {"name": "", "arguments": ""})
            entry["name"] += delta_call.function.name or ""
            entry["arguments"] += delta_call.function.arguments or ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    whole_calls = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and whole_calls
    assert [calls[i] for i in sorted(calls)] == [
        {"name": c.function.name, "arguments": c.function.arguments} for c in whole_calls
    ]
    assert {c.function.name for c in whole_calls} == {"get_time"}
    for c in whole_calls:
        _valid_call(c)


def test_a_forced_choice_is_always_a_valid_call(server) -> None:
    reply = server.client().chat.completions.create(
        model=server.model, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        max_tokens=120, seed=21, n=2, temperature=1.2,
    )  # fmt: skip
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        _valid_call(call)


def _refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as error:
        call()
    return error.value.body


def test_bad_tool_requests_get_400s_naming_the_field_and_the_server_carries_on(server) -> None:
    client = server.client()
    create = client.chat.completions.create
    not_a_schema = [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]
    unenforceable = [
        {"type": "function", "function": {"name": "f", "parameters": {"properties": {"n": {"minimum": 1}}}}}
    ]
    cases = {
        "tools[0].function.parameters": lambda: create(model=server.model, messages=ASK, tools=not_a_schema),
        "tool_choice": lambda: create(
            model=server.model,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}},
        ),  # fmt: skip
        "messages[1].tool_call_id": lambda: create(
            model=server.model, messages=[*ASK, {"role": "tool", "content": "42"}], tools=TOOLS
        ),
    }
    for param, call in cases.items():
        assert _refused(call)["param"] == param
    body = _refused(
        lambda: create(model=server.model, messages=ASK, tools=unenforceable, tool_choice="required")
    )
    assert body["param"] == "tools[0].function.parameters" and "minimum" in body["message"]
    assert create(model=server.model, messages=ASK, max_tokens=2).choices[0].message.content is not None
    assert server.health()["status"] == "ok"
