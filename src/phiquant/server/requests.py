"""Reading OpenAI request bodies: every field checked, every mistake a 400 that names the field.

The accepted fields, their types and ranges are tables; a field nobody knows is refused as OpenAI
refuses it ("Unrecognized request argument supplied"), so a typo does not silently change nothing.
Defaults for sampling are llama.cpp's (temperature 0.8, top_p 0.95, top_k 40), the same as the
`generate` and `chat` commands, so one seed and prompt give one text everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phiquant.runtime.generate import MAX_SEED, SamplingOptions
from phiquant.server.chat_fields import (
    ToolRequest,
    chat_logprobs,
    completion_logprobs,
    forced_call_grammar,
    parse_message,
    parse_tools,
    response_format_grammar,
    wrong_type,
)
from phiquant.server.errors import bad_request
from phiquant.server.images import ImageRef

DEFAULTS = SamplingOptions()
MAX_CHOICES = 16  # `n`: choices are generated one after another, so each costs a full generation
# name -> (minimum, maximum), both inclusive
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "max_tokens": (1, 2**31 - 1),
    "max_completion_tokens": (1, 2**31 - 1),
    "top_k": (0, 2**31 - 1),
    "seed": (-(2**63), 2**63 - 1),
    "n": (1, MAX_CHOICES),
    "best_of": (1, 1),
}
SHARED_FIELDS = {
    "model", "stream", "stream_options", "stop", "max_tokens", "temperature", "top_p", "top_k", "seed",
    "n", "logit_bias", "frequency_penalty", "presence_penalty", "logprobs", "user",
}  # fmt: skip
CHAT_FIELDS = SHARED_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions",
    "function_call", "parallel_tool_calls", "response_format", "metadata", "store", "service_tier",
}  # fmt: skip
COMPLETION_FIELDS = SHARED_FIELDS | {"prompt", "echo", "suffix", "best_of"}
# Fields accepted only while they ask for nothing this server lacks: name -> values that mean "off".
UNSUPPORTED_UNLESS_OFF: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none"),
    "suffix": (None, ""),
}
MAX_STOP_SEQUENCES = 4


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or text completion request, checked and with defaults filled in."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: as many as the context leaves
    sampling: SamplingOptions  # max_tokens is decided later, against the prompt length
    messages: tuple[Mapping[str, Any], ...] = ()
    prompt: str | tuple[int, ...] = ""
    echo: bool = False
    n: int = 1  # choices, generated with seeds seed, seed+1, ...
    tools: ToolRequest = ToolRequest()
    images: tuple[ImageRef, ...] = ()  # image_url parts, in order; IMAGE_PLACEHOLDER marks each in the text


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(
            f"We could not parse the JSON body of your request ({error}). The request body must be a JSON "
            "object; check that it is valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request(
            f"The request body must be a JSON object, not {type(body).__name__}.", code="invalid_json"
        )
    return body


def parse_chat_request(body: dict[str, Any], n_vocab: int) -> GenerationRequest:
    _check_fields(body, CHAT_FIELDS)
    images: list[ImageRef] = []
    messages = tuple(parse_message(m, i, images) for i, m in enumerate(_required(body, "messages", list)))
    if not messages:
        raise bad_request("'messages' must contain at least one message.", param="messages")
    tools = parse_tools(body)
    grammar = response_format_grammar(body.get("response_format"))
    if tools.forced:
        if grammar is not None:
            raise bad_request(
                "'response_format' and a 'tool_choice' that forces a call cannot both shape the reply.",
                param="response_format",
            )
        grammar = forced_call_grammar(tools)
    max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    return _request(
        body,
        n_vocab,
        max_tokens,
        messages=messages,
        tools=tools,
        grammar=grammar,
        logprobs=chat_logprobs(body),
        images=tuple(images),
    )


def parse_completion_request(body: dict[str, Any], n_vocab: int) -> GenerationRequest:
    _check_fields(body, COMPLETION_FIELDS)
    if "prompt" not in body:
        raise bad_request(
            "you must provide a prompt parameter", param="prompt", code="missing_required_parameter"
        )
    prompt = _prompt(body["prompt"], n_vocab)
    max_tokens = _integer(body, "max_tokens")
    echo = _boolean(body, "echo", False)
    # OpenAI's /v1/completions defaults to 16 tokens.
    return _request(
        body, n_vocab, 16 if max_tokens is None else max_tokens, prompt=prompt, echo=echo,
        logprobs=completion_logprobs(body),
    )  # fmt: skip


def _request(
    body: dict[str, Any],
    n_vocab: int,
    max_tokens: int | None,
    *,
    grammar: str | None = None,
    logprobs: int | None = None,
    **kind: Any,
) -> GenerationRequest:
    model = _required(body, "model", str)
    stream = _boolean(body, "stream", False)
    stream_options = body.get("stream_options")
    if stream_options is not None and (not stream or not isinstance(stream_options, dict)):
        raise bad_request(
            "'stream_options' is only allowed when 'stream' is true, and must be an object.",
            param="stream_options",
        )
    include_usage = bool((stream_options or {}).get("include_usage", False))
    n = _default(_integer(body, "n"), 1)
    _integer(body, "best_of")
    sampling = SamplingOptions(
        temperature=_number(body, "temperature", DEFAULTS.temperature),
        top_p=_number(body, "top_p", DEFAULTS.top_p),
        top_k=_default(_integer(body, "top_k"), DEFAULTS.top_k),
        seed=_seed(_integer(body, "seed")),
        stop=_stop(body.get("stop")),
        logit_bias=_logit_bias(body.get("logit_bias"), n_vocab),
        frequency_penalty=_number(body, "frequency_penalty", 0.0),
        presence_penalty=_number(body, "presence_penalty", 0.0),
        grammar=grammar,
        logprobs=logprobs,
    )
    return GenerationRequest(model, stream, include_usage, max_tokens, sampling, n=n, **kind)


def _check_fields(body: dict[str, Any], known: set[str]) -> None:
    for name in body:
        if name not in known:
            raise bad_request(
                f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
            )
    for name, off in UNSUPPORTED_UNLESS_OFF.items():
        if name in body and body[name] not in off:
            raise bad_request(
                f"'{name}' is not supported by this server.", param=name, code="unsupported_parameter"
            )


def _required(body: dict[str, Any], name: str, kind: type) -> Any:
    if body.get(name) is None:
        raise bad_request(
            f"you must provide a {name} parameter", param=name, code="missing_required_parameter"
        )
    value = body[name]
    if not isinstance(value, kind):
        raise wrong_type(name, value, "a string" if kind is str else "an array")
    return value


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(name, value, "a boolean")
    return value


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong_type(name, value, "an integer")
    low, high = INTEGER_RANGES[name]
    if value < low:
        raise bad_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if value > high:
        raise bad_request(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise wrong_type(name, value, "a number")
    low, high = NUMBER_RANGES[name]
    if not low <= value <= high:
        raise bad_request(
            f"Invalid '{name}': expected a value between {low:g} and {high:g}, but got {value} instead.",
            param=name,
            code="decimal_out_of_range",
        )
    return float(value)


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _seed(value: int | None) -> int | None:
    """OpenAI seeds are 64-bit; llama.cpp's are 32-bit.  Seeds that fit are used as they are (so
    `--seed 42` on the command line and `"seed": 42` here agree); others are folded into range."""
    return None if value is None else value % (MAX_SEED + 1)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise wrong_type("stop", value, "a string or an array of strings")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(
            f"Invalid 'stop': expected at most {MAX_STOP_SEQUENCES} sequences, but got {len(stops)}.",
            param="stop",
            code="array_above_max_length",
        )
    if any(not s for s in stops):
        raise bad_request("Invalid 'stop': stop sequences must not be empty.", param="stop")
    return tuple(stops)


def _logit_bias(value: Any, n_vocab: int) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise wrong_type("logit_bias", value, "an object")
    biases = []
    for key, bias in value.items():
        if not key.isdigit() or int(key) >= n_vocab:
            raise bad_request(
                f"Invalid 'logit_bias': {key!r} is not a token id of this model (0-{n_vocab - 1}).",
                param="logit_bias",
            )
        if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not -100 <= bias <= 100:
            raise bad_request(
                f"Invalid 'logit_bias': the bias of token {key} must be a number in [-100, 100].",
                param="logit_bias",
            )
        biases.append((int(key), float(bias)))
    return tuple(biases)


def _prompt(value: Any, n_vocab: int) -> str | tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        if not value:
            raise bad_request("'prompt' must not be empty.", param="prompt")
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        if any(not 0 <= t < n_vocab for t in value):
            raise bad_request(f"'prompt' holds token ids outside 0-{n_vocab - 1}.", param="prompt")
        return tuple(value)
    raise bad_request(
        "'prompt' must be a non-empty string or array of token ids; batches of several prompts are not supported.",
        param="prompt",
    )
