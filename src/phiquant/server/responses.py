"""The JSON shapes of OpenAI's chat and text completion responses, whole and streamed."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from phiquant import __version__
from phiquant.runtime.generate import Completion

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


def usage(completion: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    }


def finish_reason(completion: Completion) -> str:
    return FINISH_REASONS.get(completion.finish_reason, "stop")


def chat_response(header: ResponseHeader, completion: Completion) -> dict[str, Any]:
    return {
        **header.fields(),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(completion),
            }
        ],
        "usage": usage(completion),
    }


def text_response(header: ResponseHeader, completion: Completion, echo: str = "") -> dict[str, Any]:
    return {
        **header.fields(),
        "choices": [
            {
                "index": 0,
                "text": echo + completion.text,
                "logprobs": None,
                "finish_reason": finish_reason(completion),
            }
        ],
        "usage": usage(completion),
    }


def chat_chunk(header: ResponseHeader, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {
        **header.fields("chat.completion.chunk"),
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def text_chunk(header: ResponseHeader, text: str, reason: str | None = None) -> dict[str, Any]:
    return {
        **header.fields(),
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
    }


def usage_chunk(header: ResponseHeader, completion: Completion, object_name: str) -> dict[str, Any]:
    return {**header.fields(object_name), "choices": [], "usage": usage(completion)}


def server_sent_event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


DONE_EVENT = server_sent_event("[DONE]")
