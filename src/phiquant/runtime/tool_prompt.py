"""Putting OpenAI tools, tool calls and tool results into a chat template's messages.

Templates take tools in one of two ways.  Phi-4-mini-instruct and Phi-4-mini-reasoning read them from the
system message: `message['tools']` is a JSON string the template places between `<|tool|>` and `<|/tool|>`
(the model card's list of `{"name", "description", "parameters"}` objects), and every other turn is
`<|role|>content<|end|>`, so a call the assistant made goes back as its `<|tool_call|>` block and a tool's
answer as a `<|tool_response|>` turn (the token Phi-4-mini reserves for it).  Templates in the Hugging
Face style read a top-level `tools` variable and the messages' own `tool_calls` (what
`apply_chat_template(tools=...)` passes).  A template that mentions tools in neither way cannot show them
to the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.runtime.reply_parser import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

SYSTEM_MESSAGE_TOOLS = "system_message"  # Phi-4-mini: tools as a JSON string in the system turn
TOP_LEVEL_TOOLS = "top_level"  # the Hugging Face convention: a `tools` template variable
_SYSTEM_MESSAGE_PATTERN = re.compile(r"message\s*(\[\s*['\"]tools['\"]\s*\]|\.tools\b)")
_TOP_LEVEL_PATTERN = re.compile(r"\btools\b")
TOOL_RESULT_ROLE = "tool_response"


@dataclass(frozen=True)
class ToolFunction:
    name: str
    description: str | None
    parameters: dict[str, Any] | None

    def card(self) -> dict[str, Any]:
        """The function as Phi-4-mini's model card lists tools: name, description, parameters."""
        card: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            card["description"] = self.description
        if self.parameters is not None:
            card["parameters"] = self.parameters
        return card


def tool_style(template_source: str | None) -> str | None:
    """How a chat template takes tools, or None when it does not."""
    if not template_source:
        return None
    if _SYSTEM_MESSAGE_PATTERN.search(template_source):
        return SYSTEM_MESSAGE_TOOLS
    if _TOP_LEVEL_PATTERN.search(template_source):
        return TOP_LEVEL_TOOLS
    return None


@dataclass(frozen=True)
class TemplateInput:
    messages: list[dict[str, Any]]
    variables: dict[str, Any]  # more template variables (`tools` for Hugging Face style templates)


def template_input(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolFunction], style: str | None
) -> TemplateInput:
    """The messages (and variables) to render for `style`; messages hold OpenAI's fields: role,
    content, and tool_calls ([(id, name, arguments JSON)]) or tool_call_id."""
    if style == SYSTEM_MESSAGE_TOOLS:
        return TemplateInput(_system_message_style(messages, tools), {})
    plain = [_hugging_face_message(m) for m in messages]
    if style == TOP_LEVEL_TOOLS and tools:
        return TemplateInput(plain, {"tools": [{"type": "function", "function": t.card()} for t in tools]})
    return TemplateInput(plain, {})


def tool_call_block(calls: Sequence[tuple[str, str, str]]) -> str:
    """An assistant's calls as Phi-4-mini writes them: <|tool_call|>[{"name", "arguments"}]<|/tool_call|>."""
    listed = [{"name": name, "arguments": json.loads(arguments)} for _, name, arguments in calls]
    return TOOL_CALL_OPEN + json.dumps(listed, ensure_ascii=False) + TOOL_CALL_CLOSE


def _system_message_style(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolFunction]
) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content") or ""
        if message["role"] == "assistant" and message.get("tool_calls"):
            content += tool_call_block(message["tool_calls"])
        role = TOOL_RESULT_ROLE if message["role"] == "tool" else message["role"]
        rendered.append({"role": role, "content": content})
    if tools:
        listed = json.dumps([t.card() for t in tools], ensure_ascii=False)
        system = next((m for m in rendered if m["role"] == "system"), None)
        if system is None:
            system = {"role": "system", "content": ""}
            rendered.insert(0, system)
        system["tools"] = listed
    return rendered


def _hugging_face_message(message: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        result["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.loads(arguments)},
            }
            for call_id, name, arguments in message["tool_calls"]
        ]
    if message.get("tool_call_id") is not None:
        result["tool_call_id"] = message["tool_call_id"]
    return result
