"""The server's resource bounds, enforced before a request reaches the model.

Policy (each bound is a `phiquant serve` flag; defaults in ServerLimits):
- at most `max_connections` requests are handled at once; more get 429 with Retry-After at once
  (/health is exempt, so a monitor can always see the server);
- a request body over `max_body_bytes` gets 413 without being kept in memory;
- a client has `client_timeout` seconds to send its request line, headers and body; after that the
  connection gets 408 and is closed (uvicorn alone only times out idle keep-alive connections, so a
  client sending a byte at a time would hold its connection for ever);
- with an API key, every request but /health needs `Authorization: Bearer KEY`, else 401.
The generation bounds (`max_prompt_tokens`, `max_tokens`, `max_queue`, `queue_timeout`,
`request_timeout`) are applied by the routes, which know the prompt and the slots.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any

from phiquant.server.errors import AUTHENTICATION, ApiError, server_busy

EXEMPT_PATHS = {"/health"}
# A body this far over the limit is still read (and dropped) before the 413, so the client, which
# sends its whole body before reading the answer, sees the 413 and not a reset connection.
DRAIN_FACTOR = 4


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_prompt_tokens: int | None = None  # None: the context size
    max_tokens: int | None = None  # per request; None: the context size
    max_connections: int = 64
    max_queue: int = 64
    queue_timeout: float = 300.0
    request_timeout: float = 600.0
    client_timeout: float = 30.0


@dataclass
class RequestCount:
    """Requests in progress (all but /health), shared by the middleware that counts them and /health."""

    value: int = 0


class LimitsMiddleware:
    """Pure ASGI: counts requests, checks the key, reads the body within its size and time bounds,
    then hands the app a body it can read again."""

    def __init__(self, app: Any, limits: ServerLimits, api_key: str | None, in_progress: RequestCount):
        self.app = app
        self.limits = limits
        self.api_key = api_key
        self.in_progress = in_progress

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_progress.value >= self.limits.max_connections:
            busy = server_busy(
                f"the server is handling {self.in_progress.value} requests (--max-connections); retry later",
                "too_many_connections",
                retry_after=1,
            )
            await send_error(send, busy)
            return
        self.in_progress.value += 1
        try:
            await self._handle(scope, receive, send)
        finally:
            self.in_progress.value -= 1

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.api_key is not None and not self._authorized(scope):
            await send_error(
                send,
                ApiError(
                    401,
                    "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'.",
                    AUTHENTICATION,
                    code="invalid_api_key",
                ),
            )
            return
        try:
            body = await self._read_body(scope, receive)
        except ApiError as error:
            await send_error(send, error)
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        assert self.api_key is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        limit = self.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit * DRAIN_FACTOR:
            raise _too_large(limit)
        deadline = time.monotonic() + self.limits.client_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the request body did not arrive within {self.limits.client_timeout:g} s (--client-timeout)",
                    code="request_timeout",
                ) from None
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client disconnected")
            size += len(message.get("body", b""))
            if size <= limit:
                chunks.append(message.get("body", b""))
            elif size > limit * DRAIN_FACTOR:
                raise _too_large(limit)
            if not message.get("more_body", False):
                break
        if size > limit:
            raise _too_large(limit)
        return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)",
        code="request_too_large",
    )


def _content_length(scope: dict[str, Any]) -> int | None:
    value = dict(scope["headers"]).get(b"content-length")  # h11 has already refused malformed ones
    return int(value) if value is not None and value.isdigit() else None


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


async def send_error(send: Any, error: ApiError) -> None:
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.json_bytes()})
