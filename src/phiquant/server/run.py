"""Starting the server: bind the socket, start the slots, run uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from phiquant.errors import PhiquantError
from phiquant.runtime.runner import ModelRunner
from phiquant.server.limits import ServerLimits

# Seconds uvicorn waits for running responses at shutdown; generations are cancelled before that.
SHUTDOWN_GRACE_SECONDS = 5


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    parallel: int = 4
    deterministic: bool = False  # each slot in its own context: no batched decoding, no prompt reuse
    model_alias: str | None = None
    limits: ServerLimits = ServerLimits()
    access_log: bool = False
    reasoning_format: str = "deepseek"  # "none": <think> sections stay inline in the content
    allow_image_urls: bool = False


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise PhiquantError(f"cannot resolve --host {host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise PhiquantError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(runner: ModelRunner, options: ServeOptions, on_listening: Callable[[str], None]) -> None:
    """Serve until interrupted; on return every slot is stopped and its context freed."""
    try:
        import uvicorn
    except ImportError:
        raise PhiquantError("the server needs uvicorn and starlette: pip install 'phiquant[serve]'") from None
    from phiquant.server.app import build_app, new_state
    from phiquant.server.batched_slots import BatchedSlotPool
    from phiquant.server.protocol import head_timeout_protocol
    from phiquant.server.slots import IsolatedSlotPool, SlotPool

    sock = bind_socket(options.host, options.port)
    pool: SlotPool
    if options.deterministic:
        pool = IsolatedSlotPool(runner, options.parallel, max(1, runner.threads // options.parallel))
    else:
        pool = BatchedSlotPool(runner, options.parallel)
    try:
        state = new_state(
            runner,
            pool,
            options.limits,
            options.model_alias,
            options.reasoning_format,
            allow_image_urls=options.allow_image_urls,
        )
        app = build_app(state, api_key=options.api_key)
        config = uvicorn.Config(
            app,
            http=head_timeout_protocol(options.limits.client_timeout),
            lifespan="off",
            log_level="warning",
            access_log=options.access_log,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        server = uvicorn.Server(config)
        on_listening(url_of(sock))
        server.run(sockets=[sock])
    finally:
        pool.close()
        sock.close()
