"""Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}` with a 4xx status.

Client mistakes never become a 500: every check on a request raises ApiError with the status and
type OpenAI uses for the same mistake, so SDKs raise their usual exceptions (BadRequestError,
AuthenticationError, NotFoundError, RateLimitError...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, INVALID_REQUEST, param, code)


def context_length_exceeded(n_ctx: int, prompt_tokens: int, completion_tokens: int, where: str) -> ApiError:
    # OpenAI's wording, so clients that parse it (LangChain trims history on it) keep working.
    return bad_request(
        f"This model's maximum context length is {n_ctx} tokens. However, you requested "
        f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the {where}, {completion_tokens} "
        f"in the completion). Please reduce the length of the {where} or completion.",
        param="messages" if where == "messages" else "prompt",
        code="context_length_exceeded",
    )


def server_busy(message: str, code: str, retry_after: float) -> ApiError:
    return ApiError(429, message, RATE_LIMIT, None, code, {"Retry-After": str(max(1, round(retry_after)))})
