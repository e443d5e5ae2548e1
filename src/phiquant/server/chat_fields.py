"""Reading the chat fields beyond plain text: messages with tool calls and tool results, `tools`,
`tool_choice`, `response_format` and `logprobs`.  Each mistake is a 400 naming the field (`param`).

A forced call (`tool_choice` "required" or a named function) and a JSON `response_format` become a
grammar for llama.cpp's sampler here, so a schema the grammar cannot enforce is refused before the
request queues, naming the keywords at fault.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs shipped

from phiquant.runtime.json_grammar import (
    FunctionSpec,
    UnsupportedSchema,
    json_object_grammar,
    schema_grammar,
    tool_call_grammar,
    unsupported_features,
)
from phiquant.runtime.sampling import MAX_TOP_LOGPROBS
from phiquant.runtime.tool_prompt import ToolFunction
from phiquant.server.errors import ApiError, bad_request
from phiquant.server.images import IMAGE_PLACEHOLDER, ImageRef, image_part

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit
MAX_COMPLETION_LOGPROBS = 5  # /v1/completions' `logprobs` bound (OpenAI)


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[ToolFunction, ...] = ()
    choice: str = "auto"  # "auto", "none", "required" or "function" (then `function` names it)
    function: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")


def wrong_type(name: str, value: Any, expected: str) -> ApiError:
    got = "boolean" if isinstance(value, bool) else type(value).__name__
    got = {"str": "string", "list": "array", "dict": "object", "int": "integer", "NoneType": "null"}.get(
        got, got
    )
    return bad_request(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
        param=name,
        code="invalid_type",
    )


def parse_message(message: Any, index: int, images: list[ImageRef]) -> dict[str, Any]:
    """One message, its content as text; each image_url part is appended to `images` and marked in the
    text by IMAGE_PLACEHOLDER."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise wrong_type(where, message, "an object")
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(
            f"Invalid value for '{where}.role': {role!r}. Supported roles: {', '.join(sorted(ROLES))}.",
            param=f"{where}.role",
        )
    parsed: dict[str, Any] = {"role": ROLES[role]}
    tool_calls = message.get("tool_calls")
    if role == "assistant" and tool_calls is not None:
        parsed["tool_calls"] = _message_tool_calls(tool_calls, f"{where}.tool_calls")
    content = message.get("content")
    if content is None and parsed.get("tool_calls"):
        content = ""
    if isinstance(content, str):
        content = content.replace(IMAGE_PLACEHOLDER, "")  # only image parts place images
    elif isinstance(content, list):
        content = "".join(
            _content_part(part, f"{where}.content[{i}]", images) for i, part in enumerate(content)
        )
    if not isinstance(content, str):
        raise wrong_type(f"{where}.content", content, "a string or an array of text and image_url parts")
    parsed["content"] = content
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(
                f"Missing parameter '{where}.tool_call_id': a message with role 'tool' must answer a tool call "
                "by its id.",
                param=f"{where}.tool_call_id",
                code="missing_required_parameter",
            )
        parsed["tool_call_id"] = call_id
    return parsed


def _message_tool_calls(value: Any, where: str) -> tuple[tuple[str, str, str], ...]:
    """(id, function name, arguments JSON) for each call an assistant message made."""
    if not isinstance(value, list):
        raise wrong_type(where, value, "an array")
    calls = []
    for i, call in enumerate(value):
        here = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise bad_request(
                f"Invalid '{here}': expected {{'id': ..., 'type': 'function', 'function': {{'name': ..., "
                "'arguments': ...}}}.",
                param=here,
            )
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise bad_request(f"Invalid '{here}.function': name and arguments must be strings.", param=here)
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError:
            decoded = None
        if not isinstance(decoded, dict):
            raise bad_request(
                f"Invalid '{here}.function.arguments': expected a JSON object as a string.",
                param=f"{here}.function.arguments",
            )
        calls.append((call["id"], name, arguments))
    return tuple(calls)


def _content_part(part: Any, where: str, images: list[ImageRef]) -> str:
    if isinstance(part, dict) and part.get("type") == "image_url":
        images.append(image_part(part, where))
        return IMAGE_PLACEHOLDER
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise bad_request(
            f"Invalid '{where}': this server accepts text and image_url parts "
            "({'type': 'text', 'text': ...} or {'type': 'image_url', 'image_url': {'url': 'data:...'}}).",
            param=where,
        )
    return str(part["text"]).replace(IMAGE_PLACEHOLDER, "")


def _check_schema(schema: Any, param: str) -> None:
    if not isinstance(schema, dict):
        raise wrong_type(param, schema, "an object (a JSON Schema)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except RecursionError:
        raise bad_request(f"Invalid schema for '{param}': it is nested too deeply.", param=param) from None
    except jsonschema.SchemaError as error:
        where = "/".join(str(p) for p in error.path) or "(top level)"
        raise bad_request(
            f"Invalid schema for '{param}': it is not a valid JSON Schema: {error.message} (at {where}).",
            param=param,
            code="invalid_schema",
        ) from None


def parse_tools(body: dict[str, Any]) -> ToolRequest:
    value = body.get("tools")
    if value is None or value == []:
        if body.get("tool_choice") not in (None, "none"):
            raise bad_request(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        return ToolRequest()
    if not isinstance(value, list):
        raise wrong_type("tools", value, "an array")
    if len(value) > MAX_TOOLS:
        raise bad_request(f"'tools' holds {len(value)} tools; at most {MAX_TOOLS}.", param="tools")
    tools = tuple(_tool(tool, i) for i, tool in enumerate(value))
    names = [t.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise bad_request(f"Invalid 'tools': the function name {duplicate!r} appears twice.", param="tools")
    choice, function = _tool_choice(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise wrong_type("parallel_tool_calls", parallel, "a boolean")
    return ToolRequest(tools, choice, function, parallel)


def _tool(tool: Any, index: int) -> ToolFunction:
    where = f"tools[{index}]"
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("function"), dict)
    ):
        raise bad_request(
            f"Invalid '{where}': expected {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}.",
            param=where,
        )
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise bad_request(
            f"Invalid '{where}.function.name': {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'.",
            param=f"{where}.function.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise wrong_type(f"{where}.function.description", description, "a string")
    parameters = function.get("parameters")
    if parameters is not None:
        _check_schema(parameters, f"{where}.function.parameters")
        if parameters.get("type", "object") != "object":
            raise bad_request(
                f"Invalid '{where}.function.parameters': a function's parameters must be of type 'object'.",
                param=f"{where}.function.parameters",
            )
    return ToolFunction(name, description, parameters)


def _tool_choice(value: Any, names: list[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if value in ("auto", "none", "required"):
        return value, None
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_request(
            "Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}.",
            param="tool_choice",
        )
    if name not in names:
        raise bad_request(
            f"Invalid 'tool_choice': no function named {name!r} in 'tools' ({', '.join(names)}).",
            param="tool_choice",
        )
    return "function", name


def forced_call_grammar(request: ToolRequest) -> str:
    """The grammar that makes the reply a valid call of the allowed function(s)."""
    allowed = [
        (i, t)
        for i, t in enumerate(request.tools)
        if request.choice == "required" or t.name == request.function
    ]
    for index, tool in allowed:
        features = unsupported_features(tool.parameters or {"type": "object"})
        if features:
            raise _unsupported(UnsupportedSchema(features), f"tools[{index}].function.parameters")
    try:
        return tool_call_grammar(
            [FunctionSpec(t.name, t.parameters or {"type": "object"}) for _, t in allowed],
            parallel=request.parallel,
        )
    except UnsupportedSchema as error:
        raise _unsupported(error, "tools") from None


def _unsupported(error: UnsupportedSchema, param: str) -> ApiError:
    return bad_request(
        f"Invalid schema for '{param}': {error.message}. Remove these keywords or describe them in the "
        "description instead.",
        param=param,
        code="unsupported_schema",
    )


def response_format_grammar(value: Any) -> str | None:
    """None for plain text; else the grammar of a JSON object or of the given JSON schema."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type("response_format", value, "an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind != "json_schema":
        raise bad_request(
            f"Invalid 'response_format.type': {kind!r}; expected 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad_request(
            "Invalid 'response_format.json_schema': expected {'name': ..., 'schema': {...}, 'strict': ...}.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {})
    _check_schema(schema, "response_format.json_schema.schema")
    try:
        return schema_grammar(schema)
    except UnsupportedSchema as error:
        raise _unsupported(error, "response_format.json_schema.schema") from None


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives to report per token (0: the sampled token only), or None for no logprobs."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise wrong_type("logprobs", wanted, "a boolean")
    top = body.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(
                f"Invalid 'top_logprobs': expected an integer between 0 and {MAX_TOP_LOGPROBS}.",
                param="top_logprobs",
            )
        if not wanted:
            raise bad_request(
                "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is given.",
                param="top_logprobs",
            )
    return (top or 0) if wanted else None


def completion_logprobs(body: dict[str, Any]) -> int | None:
    value = body.get("logprobs")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COMPLETION_LOGPROBS:
        raise bad_request(
            f"Invalid 'logprobs': expected an integer between 0 and {MAX_COMPLETION_LOGPROBS}.",
            param="logprobs",
        )
    return value
