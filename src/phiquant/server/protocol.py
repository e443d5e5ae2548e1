"""uvicorn's h11 protocol with a deadline for each request head.

uvicorn times out only idle keep-alive connections, and its timer stops at the first byte, so a
client that sends its request line and headers a byte at a time holds a connection for ever
(slowloris).  Here each request head must be complete within --client-timeout of the connection
opening (or of the previous response on a keep-alive connection); otherwise the client gets 408 and
the connection is closed.  A request being handled is left alone: the body has its own bound
(limits.LimitsMiddleware) and generation has --request-timeout.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from phiquant.server.errors import ApiError

_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (request line and headers)."""

    head_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request on this keep-alive connection has the same bound

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being handled: its body and its answer have their own bounds
        body = ApiError(
            408, f"the request head did not arrive within {self.head_timeout:g} s", code="request_timeout"
        ).json_bytes()
        self.transport.write(_HEAD_TIMEOUT_RESPONSE % (len(body), body))
        self.transport.close()


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": seconds})
