"""`phiquant serve`: an OpenAI-compatible HTTP server for one model."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.commands.runtime_flags import add_model_arguments, runner_options
from phiquant.errors import PhiquantError
from phiquant.server.limits import ServerLimits

API_KEY_ENV = "PHIQUANT_API_KEY"
DEFAULT_LIMITS = ServerLimits()


SERVE_CONTEXT_HELP = (
    "context size in tokens of each slot (default: the model's original context for LongRoPE models such "
    "as Phi-3.5-mini and Phi-3-*-128k, else its training context). Above a LongRoPE model's original "
    "context, requests whose prompt plus max_tokens fit the original context still run with the short "
    "RoPE factors (a request without max_tokens gets that room if its prompt fits); longer ones run with "
    "the long factors in a second context of N tokens, one request at a time, made at the first such "
    "request (with --deterministic every slot uses the long factors)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, context_help=SERVE_CONTEXT_HELP)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    group.add_argument(
        "--port", type=int, default=8080, help="port (default %(default)s; 0 picks a free one)"
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)",
    )
    group.add_argument(
        "--parallel", type=int, default=4, metavar="N",
        help="generation slots: requests that run at once, decoded together in one batch per step "
        "(default %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--deterministic", action="store_true",
        help="run each slot alone in its own context, so that the same request always gives the same "
        "text whatever runs beside it (batched decoding changes the last bits of the logits); no prompt "
        "reuse between requests",
    )  # fmt: skip
    group.add_argument(
        "--model-alias", metavar="NAME", help="the model id clients use (default: the file name)"
    )
    group.add_argument(
        "--reasoning-format", choices=("deepseek", "none"), default="deepseek",
        help="a reasoning model's <think> section: 'deepseek' returns it as reasoning_content, 'none' "
        "leaves it inline in the content (default %(default)s)",
    )  # fmt: skip
    limits = parser.add_argument_group(
        "limits",
        "Requests beyond --parallel wait in a first-come-first-served queue of --max-queue; beyond that, "
        "and beyond --max-connections requests in progress, the server answers 429 with Retry-After.",
    )
    _limit(
        limits,
        "--max-body-bytes",
        int,
        DEFAULT_LIMITS.max_body_bytes,
        "largest request body; larger gets 413",
    )
    _limit(limits, "--max-prompt-tokens", int, None, "longest prompt (default: the context size)")
    _limit(
        limits, "--max-tokens", int, None, "largest max_tokens a request may ask (default: the context size)"
    )
    _limit(limits, "--max-connections", int, DEFAULT_LIMITS.max_connections, "requests in progress at once")
    _limit(limits, "--max-queue", int, DEFAULT_LIMITS.max_queue, "requests waiting for a slot")
    _limit(
        limits,
        "--queue-timeout",
        float,
        DEFAULT_LIMITS.queue_timeout,
        "seconds a request may wait for a slot",
    )
    _limit(
        limits, "--request-timeout", float, DEFAULT_LIMITS.request_timeout,
        "seconds of generation per request; then it ends with finish_reason 'length'",
    )  # fmt: skip
    _limit(
        limits, "--client-timeout", float, DEFAULT_LIMITS.client_timeout,
        "seconds a client has to send its request (head and body); slower ones get 408",
    )  # fmt: skip
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="let image_url parts name http(s) URLs, fetched by the server (default: data: URLs only)",
    )


def _limit(group: Any, flag: str, kind: type, default: Any, text: str) -> None:
    shown = "" if default is None else " (default %(default)s)"
    group.add_argument(flag, type=kind, default=default, metavar="N", help=text + shown)


def limits_from(args: argparse.Namespace) -> ServerLimits:
    values = {
        "max_body_bytes": args.max_body_bytes,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_tokens": args.max_tokens,
        "max_connections": args.max_connections,
        "max_queue": args.max_queue,
        "queue_timeout": args.queue_timeout,
        "request_timeout": args.request_timeout,
        "client_timeout": args.client_timeout,
    }
    for name, value in values.items():
        minimum = 0 if name == "max_queue" else 1
        if value is not None and value < minimum:
            raise PhiquantError(f"--{name.replace('_', '-')} must be at least {minimum}, not {value}")
    return ServerLimits(**values)


def run(args: argparse.Namespace, output: Output) -> int:
    from phiquant.server.run import ServeOptions, serve

    if args.parallel < 1:
        raise PhiquantError(f"--parallel must be at least 1, not {args.parallel}")
    if not 0 <= args.port <= 65535:
        raise PhiquantError(f"--port must be in 0-65535, not {args.port}")
    options = ServeOptions(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        parallel=args.parallel,
        deterministic=args.deterministic,
        model_alias=args.model_alias,
        limits=limits_from(args),
        access_log=args.access_log,
        reasoning_format=args.reasoning_format,
        allow_image_urls=args.allow_image_urls,
    )
    with api.load(
        args.model,
        dataclasses.replace(
            runner_options(args, n_contexts=args.parallel), longrope_lanes=not args.deterministic
        ),
        reporter=output.reporter(),
    ) as runner:
        model_id = options.model_alias or runner.name

        def announce(url: str) -> None:
            if output.json:
                record = {"event": "listening", "url": url, "base_url": f"{url}/v1", "model": model_id}
                print(json.dumps(record), flush=True)
            elif not output.quiet:
                print(
                    f"phiquant: serving {model_id} at {url}/v1 ({args.parallel} slot(s) of {runner.n_ctx} "
                    f"tokens; {runner.placement.describe()}). Ctrl-C stops.",
                    file=sys.stderr,
                    flush=True,
                )

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C and SIGTERM are how a server stops
            serve(runner, options, announce)
    if not output.quiet and not output.json:
        print("phiquant: server stopped", file=sys.stderr)
    return 0


COMMAND = Command(
    name="serve",
    summary="serve a model over an OpenAI-compatible HTTP API",
    description=(
        "Serve one model at /v1/models, /v1/chat/completions and /v1/completions (streamed or not), plus "
        "/health. Prompts use the model's own chat template; every end-of-generation token ends an answer "
        "and none is ever sent. Tools (tool_choice auto/none/required/named) for templates that take them "
        "(Phi-4-mini-instruct, Phi-4-mini-reasoning); response_format json_object and json_schema through "
        "llama.cpp grammars; logprobs and top_logprobs; n choices; a reasoning model's <think> section as "
        "reasoning_content. Invalid requests get OpenAI-style JSON errors with a 4xx status."
    ),
    add_arguments=add_arguments,
    run=run,
)
