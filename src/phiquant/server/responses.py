"""The JSON shapes of OpenAI's chat and text completion responses, whole and streamed: choices,
messages with reasoning and tool calls, log-probabilities, usage."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.runtime.generate import Completion, TokenLogprob
from phiquant.runtime.reply_parser import ParsedReply, ToolCall
from phiquant.version import __version__

TokenPiece = Callable[[int], bytes]  # a token id's text as bytes, special tokens included

SYSTEM_FINGERPRINT = f"phiquant-{__version__}"
# phiquant's finish reasons -> OpenAI's: a time limit is reported like a token limit, as llama-server
# does for its own time limit (t_max_predict_ms).
FINISH_REASONS = {"stop": "stop", "length": "length", "time": "length", "cancelled": "stop"}


@dataclass(frozen=True)
class ResponseHeader:
    """What every chunk of one response repeats."""

    id: str
    object: str
    created: int
    model: str

    @classmethod
    def new(cls, kind: str, model: str) -> ResponseHeader:
        prefix, name = {"chat": ("chatcmpl", "chat.completion"), "text": ("cmpl", "text_completion")}[kind]
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", name, int(time.time()), model)

    def fields(self, object_name: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name or self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }


def usage(completions: Sequence[Completion]) -> dict[str, Any]:
    """One prompt, read once per request; the completion tokens of every choice."""
    prompt = completions[0].prompt_tokens if completions else 0
    cached = completions[0].cached_tokens if completions else 0
    generated = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def finish_reason(completion: Completion, called_tools: bool = False) -> str:
    reason = FINISH_REASONS.get(completion.finish_reason, "stop")
    return "tool_calls" if called_tools and reason == "stop" else reason


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    return shape if index is None else {"index": index, **shape}


def chat_message(reply: ParsedReply) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content if reply.content or not reply.tool_calls else None,
        "refusal": None,
    }
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [tool_call(call) for call in reply.tool_calls]
    return message


def chat_choice(
    index: int, completion: Completion, reply: ParsedReply, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": chat_message(reply),
        "logprobs": logprobs,
        "finish_reason": finish_reason(completion, bool(reply.tool_calls)),
    }


def text_choice(
    index: int, completion: Completion, text: str, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(completion)}


def completion_response(
    header: ResponseHeader, choices: list[dict[str, Any]], completions: Sequence[Completion]
) -> dict[str, Any]:
    return {**header.fields(), "choices": choices, "usage": usage(completions)}


def _token_entry(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}


def chat_logprobs(entries: Sequence[TokenLogprob], piece: TokenPiece) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: each token with its bytes and its most likely alternatives."""
    content = []
    for entry in entries:
        shape = _token_entry(piece(entry.token), entry.logprob)
        shape["top_logprobs"] = [_token_entry(piece(t), lp) for t, lp in entry.top]
        content.append(shape)
    return {"content": content, "refusal": None}


def text_logprobs(entries: Sequence[TokenLogprob], piece: TokenPiece, offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs`: parallel lists, top alternatives as {token: logprob}."""
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        text = piece(entry.token).decode("utf-8", errors="replace")
        tokens.append(text)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [
            {piece(t).decode("utf-8", errors="replace"): lp for t, lp in e.top} for e in entries
        ],
        "text_offset": offsets,
    }


def chat_chunk(
    header: ResponseHeader,
    delta: dict[str, Any],
    reason: str | None = None,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        **header.fields("chat.completion.chunk"),
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
    }


def text_chunk(
    header: ResponseHeader,
    text: str,
    reason: str | None = None,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        **header.fields(),
        "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}],
    }


def usage_chunk(
    header: ResponseHeader, completions: Sequence[Completion], object_name: str
) -> dict[str, Any]:
    return {**header.fields(object_name), "choices": [], "usage": usage(completions)}


def server_sent_event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


DONE_EVENT = server_sent_event("[DONE]")
