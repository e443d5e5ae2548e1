"""How tools reach a chat template: Phi-4-mini's templates take them as a JSON string in the system turn,
Hugging Face style templates as a `tools` variable, the Phi-3 templates not at all."""

from __future__ import annotations

import json

from phiquant.runtime.chat_template import ChatTemplate
from phiquant.runtime.tool_prompt import (
    SYSTEM_MESSAGE_TOOLS,
    TOP_LEVEL_TOOLS,
    ToolFunction,
    template_input,
    tool_style,
)
from tests.fixtures.chat_templates import PHI35_MINI_TEMPLATE
from tests.fixtures.phi4_specs import PHI4, PHI4_MINI, PHI4_MINI_REASONING

WEATHER = ToolFunction(
    "get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL = ("call_1", "get_weather", '{"city": "Paris"}')
CONVERSATION = [
    {"role": "user", "content": "Paris?"},
    {"role": "assistant", "content": "", "tool_calls": (CALL,)},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
]
HF_STYLE = (
    "{% if tools %}TOOLS{{ tools | tojson }}{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL{{ c.function | tojson }}{% endfor %}{% endfor %}"
)


def test_which_templates_take_tools() -> None:
    assert tool_style(PHI4_MINI.chat_template) == SYSTEM_MESSAGE_TOOLS
    assert tool_style(PHI4_MINI_REASONING.chat_template) == SYSTEM_MESSAGE_TOOLS
    assert tool_style(HF_STYLE) == TOP_LEVEL_TOOLS
    assert tool_style(PHI35_MINI_TEMPLATE) is None
    assert tool_style(PHI4.chat_template) is None
    assert tool_style(None) is None


def test_phi4_mini_gets_tools_in_the_system_turn_and_calls_in_its_own_format() -> None:
    rendered = template_input(CONVERSATION, [WEATHER], SYSTEM_MESSAGE_TOOLS)
    text = ChatTemplate(PHI4_MINI.chat_template, origin="test", eos_token="<|endoftext|>").render(
        rendered.messages, **rendered.variables
    )
    listed = json.dumps([{"name": "get_weather", "description": "Weather", "parameters": WEATHER.parameters}])
    assert text == (
        f"<|system|><|tool|>{listed}<|/tool|><|end|><|user|>Paris?<|end|>"
        '<|assistant|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|><|end|>'
        "<|tool_response|>sunny<|end|><|assistant|>"
    )


def test_an_existing_system_message_carries_the_tools() -> None:
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]]
    rendered = template_input(messages, [WEATHER], SYSTEM_MESSAGE_TOOLS)
    assert rendered.messages[0]["content"] == "Be brief." and "get_weather" in rendered.messages[0]["tools"]
    assert len(rendered.messages) == 2


def test_hugging_face_style_templates_get_a_tools_variable_and_structured_calls() -> None:
    rendered = template_input(CONVERSATION, [WEATHER], TOP_LEVEL_TOOLS)
    text = ChatTemplate(HF_STYLE, origin="test").render(rendered.messages, **rendered.variables)
    assert text.startswith('TOOLS[{"type": "function", "function": {"name": "get_weather"')
    assert 'CALL{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert rendered.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
