"""Replies split into reasoning, text and tool calls: exact strings in the models' formats, and the same
split whether the text arrives whole or in any pieces."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phiquant.runtime.reply_parser import (
    ReplyStreamParser,
    ToolCall,
    parse_reply,
    parse_tool_block,
    prompt_opens_reasoning,
)

# Phi-4-mini's format: the model card lists tools as [{"name", "description", "parameters"}] between
# <|tool|> and <|/tool|>; calls come back as such a list of {"name", "arguments"} between the call markers.
ONE_CALL = '<|tool_call|>[{"name": "get_weather_updates", "arguments": {"location": "Paris"}}]<|/tool_call|>'
TWO_CALLS = (
    '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "get_time", "arguments": {"zone": "CET", "hour24": true}}]<|/tool_call|>'
)


def test_a_phi4_mini_call_becomes_an_openai_tool_call() -> None:
    reply = parse_reply(ONE_CALL, reasoning=False, tools=True)
    assert reply.tool_calls == [ToolCall("get_weather_updates", '{"location": "Paris"}')]
    assert reply.content == "" and reply.reasoning is None


def test_parallel_calls_keep_their_order_and_arguments() -> None:
    reply = parse_reply("Checking." + TWO_CALLS, reasoning=False, tools=True)
    assert [c.name for c in reply.tool_calls] == ["get_weather", "get_time"]
    assert [json.loads(c.arguments) for c in reply.tool_calls] == [
        {"city": "Paris"},
        {"zone": "CET", "hour24": True},
    ]
    assert reply.content == "Checking."


def test_a_single_object_and_string_arguments_are_accepted() -> None:
    block = '{"name": "f", "arguments": "{\\"x\\": 1}"}'
    assert parse_tool_block(block) == [ToolCall("f", '{"x": 1}')]


@pytest.mark.parametrize(
    "block",
    ["not json", '[{"arguments": {}}]', '[{"name": "f", "arguments": [1]}]', "[]", '{"name": ""}', '"f"'],
)
def test_a_block_that_is_not_a_call_stays_text(block: str) -> None:
    text = f"<|tool_call|>{block}<|/tool_call|>"
    reply = parse_reply(text, reasoning=False, tools=True)
    assert reply.tool_calls == [] and reply.content == text


def test_without_tools_the_markers_are_plain_text() -> None:
    reply = parse_reply(ONE_CALL, reasoning=False, tools=False)
    assert reply.content == ONE_CALL and reply.tool_calls == []


def test_an_unclosed_call_stays_text() -> None:
    text = '<|tool_call|>[{"name": "f", "arguments": {}}]'
    assert parse_reply(text, reasoning=False, tools=True).content == text


def test_reasoning_goes_to_its_own_field_and_the_answer_starts_after_it() -> None:
    reply = parse_reply(
        "<think>2+2 is 4.\nCheck: yes.</think>\n\nThe answer is 4.", reasoning=True, tools=False
    )
    assert reply.reasoning == "2+2 is 4.\nCheck: yes."
    assert reply.content == "The answer is 4."


def test_reasoning_off_leaves_the_section_inline() -> None:
    text = "<think>hmm</think>4"
    reply = parse_reply(text, reasoning=False, tools=False)
    assert reply.content == text and reply.reasoning is None


def test_only_a_leading_think_section_is_reasoning() -> None:
    text = "Sure. <think>not reasoning</think> done"
    reply = parse_reply(text, reasoning=True, tools=False)
    assert reply.content == text and reply.reasoning is None


def test_unfinished_reasoning_is_all_reasoning() -> None:
    reply = parse_reply("  <think>still thinking", reasoning=True, tools=False)
    assert reply.reasoning == "still thinking" and reply.content == ""


def test_a_prompt_that_opens_think_starts_the_reply_in_reasoning() -> None:
    assert prompt_opens_reasoning("<|im_start|>assistant<|im_sep|><think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant<|im_sep|>")
    reply = parse_reply("so 4</think>4", reasoning=True, tools=False, started_in_reasoning=True)
    assert (reply.reasoning, reply.content) == ("so 4", "4")


def test_reasoning_then_a_tool_call() -> None:
    reply = parse_reply("<think>need weather</think>" + ONE_CALL, reasoning=True, tools=True)
    assert reply.reasoning == "need weather"
    assert [c.name for c in reply.tool_calls] == ["get_weather_updates"] and reply.content == ""


REPLIES = [
    "<think>a < b and </thin not closed yet</think>  The <|tool_ answer" + TWO_CALLS + " after",
    "<thinking is not a marker",
    ONE_CALL + ONE_CALL,
    "<think>x</think>",
    " <|tool_call|>[broken]<|/tool_call|> <|tool_call",
]


def _streamed(text: str, cuts: list[int], **flags: bool) -> tuple[str, str, list[ToolCall]]:
    parser = ReplyStreamParser(**flags)
    bounds = [0, *sorted(set(cuts)), len(text)]
    parts = []
    for start, end in zip(bounds, bounds[1:]):
        parts += parser.push(text[start:end])
    parts += parser.finish()
    return (
        "".join(p.text for p in parts if p.kind == "reasoning"),
        "".join(p.text for p in parts if p.kind == "content"),
        [p.call for p in parts if p.call is not None],
    )


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REPLIES), st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_split_into_pieces_parses_like_the_whole(text: str, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(text)]
    whole = parse_reply(text, reasoning=True, tools=True)
    assert _streamed(text, cuts, reasoning=True, tools=True) == (
        whole.reasoning or "",
        whole.content,
        whole.tool_calls,
    )


def test_every_character_alone_parses_like_the_whole() -> None:
    for text in REPLIES:
        whole = parse_reply(text, reasoning=True, tools=True)
        pieces = _streamed(text, list(range(len(text))), reasoning=True, tools=True)
        assert pieces == (whole.reasoning or "", whole.content, whole.tool_calls), text
