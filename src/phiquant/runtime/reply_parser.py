"""Splitting a generated reply into reasoning, answer text and tool calls, whole or as it streams.

Reasoning models (Phi-4-reasoning, -plus, Phi-4-mini-reasoning) open their reply with `<think>` and close
the reasoning with `</think>`; the text between goes to `reasoning_content`, as llama-server and DeepSeek's
API report it.  A prompt that already ends inside `<think>` (a template that opens the section itself)
starts in reasoning.  Phi-4-mini answers tool calls between `<|tool_call|>` and `<|/tool_call|>` as a JSON
list (or one object) of `{"name": ..., "arguments": {...}}`, the shape of the tool list its template puts
between `<|tool|>` and `<|/tool|>`.  A block that is not such JSON stays in the text, untouched.

One streaming parser serves both cases: `parse_reply` runs it over the whole text, so a streamed reply
and the same reply returned whole always split the same way.  Markers that arrive split across pieces
are held back until they are complete or ruled out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"
# Where a vocabulary has these as control tokens, their text must reach the parser (llama-server's
# "preserved tokens"): SamplingOptions.preserved_tokens.
MARKERS = (THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI's `function.arguments` carries it


@dataclass(frozen=True)
class ReplyPart:
    """One piece of a parsed reply: kind is "reasoning", "content" or "tool_call"."""

    kind: str
    text: str = ""
    call: ToolCall | None = None


@dataclass
class ParsedReply:
    content: str
    reasoning: str | None  # None: the reply had no reasoning section
    tool_calls: list[ToolCall]


def parse_tool_block(block: str) -> list[ToolCall] | None:
    """The calls in the JSON between the tool-call markers, or None when it is not a list of calls."""
    try:
        value: Any = json.loads(block)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _held_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


class ReplyStreamParser:
    """Feed generated text with push(); each call returns the parts now certain, finish() the rest.

    reasoning: split out a leading <think> section; started_in_reasoning: the prompt opened it;
    tools: turn <|tool_call|> blocks into calls."""

    def __init__(self, *, reasoning: bool, tools: bool, started_in_reasoning: bool = False):
        self.tools = tools
        self.mode = "reasoning" if started_in_reasoning else ("start" if reasoning else "content")
        self.buffer = ""
        self.saw_reasoning = started_in_reasoning

    def push(self, text: str) -> list[ReplyPart]:
        self.buffer += text
        parts: list[ReplyPart] = []
        while self.buffer:
            step = getattr(self, f"_step_{self.mode}")(parts)
            if not step:
                break
        return [p for p in parts if p.text or p.call is not None]

    def finish(self) -> list[ReplyPart]:
        parts = self.push("")
        rest, self.buffer = self.buffer, ""
        if rest:
            if self.mode == "block":
                rest = TOOL_CALL_OPEN + rest  # never closed: the text as the model wrote it
            parts.append(ReplyPart("reasoning" if self.mode == "reasoning" else "content", rest))
        return parts

    # Each step consumes from self.buffer and returns whether it can go on without more text.
    def _step_start(self, parts: list[ReplyPart]) -> bool:
        stripped = self.buffer.lstrip()
        if stripped.startswith(THINK_OPEN):
            self.buffer = stripped[len(THINK_OPEN) :]
            self.mode, self.saw_reasoning = "reasoning", True
            return True
        if THINK_OPEN.startswith(stripped):
            return False  # still possibly the opening marker
        self.mode = "content"
        return True

    def _step_reasoning(self, parts: list[ReplyPart]) -> bool:
        index = self.buffer.find(THINK_CLOSE)
        if index < 0:
            keep = _held_back(self.buffer, THINK_CLOSE)
            parts.append(ReplyPart("reasoning", self.buffer[: len(self.buffer) - keep]))
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return False
        parts.append(ReplyPart("reasoning", self.buffer[:index]))
        self.buffer = self.buffer[index + len(THINK_CLOSE) :].lstrip()
        self.mode = "after_reasoning"
        return True

    def _step_after_reasoning(self, parts: list[ReplyPart]) -> bool:
        # The answer starts at its first non-space character (llama-server trims it the same way).
        self.buffer = self.buffer.lstrip()
        if self.buffer:
            self.mode = "content"
        return bool(self.buffer)

    def _step_content(self, parts: list[ReplyPart]) -> bool:
        if not self.tools:
            parts.append(ReplyPart("content", self.buffer))
            self.buffer = ""
            return False
        index = self.buffer.find(TOOL_CALL_OPEN)
        if index < 0:
            keep = _held_back(self.buffer, TOOL_CALL_OPEN)
            parts.append(ReplyPart("content", self.buffer[: len(self.buffer) - keep]))
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return False
        parts.append(ReplyPart("content", self.buffer[:index]))
        self.buffer = self.buffer[index + len(TOOL_CALL_OPEN) :]
        self.mode = "block"
        return True

    def _step_block(self, parts: list[ReplyPart]) -> bool:
        index = self.buffer.find(TOOL_CALL_CLOSE)
        if index < 0:
            return False
        block = self.buffer[:index]
        self.buffer = self.buffer[index + len(TOOL_CALL_CLOSE) :]
        self.mode = "content"
        calls = parse_tool_block(block)
        if calls is None:
            parts.append(ReplyPart("content", TOOL_CALL_OPEN + block + TOOL_CALL_CLOSE))
        else:
            parts += [ReplyPart("tool_call", call=call) for call in calls]
        return True


def parse_reply(
    text: str, *, reasoning: bool, tools: bool, started_in_reasoning: bool = False
) -> ParsedReply:
    parser = ReplyStreamParser(reasoning=reasoning, tools=tools, started_in_reasoning=started_in_reasoning)
    parts = parser.push(text) + parser.finish()
    thoughts = "".join(p.text for p in parts if p.kind == "reasoning")
    return ParsedReply(
        content="".join(p.text for p in parts if p.kind == "content"),
        reasoning=thoughts if parser.saw_reasoning else None,
        tool_calls=[p.call for p in parts if p.call is not None],
    )


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside an open <think> section (the model continues reasoning)."""
    return prompt_text.rstrip().endswith(THINK_OPEN)
