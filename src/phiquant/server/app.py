"""The OpenAI-compatible HTTP API on Starlette: /v1/models, /v1/chat/completions, /v1/completions, /health.

A generation request is checked completely (fields, model, prompt length against the context and
the limits) before it queues for a slot, so every refusal comes with its proper 4xx status, even for
streams, whose status line goes out before the first token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from phiquant.errors import PhiquantError
from phiquant.runtime.generate import Completion
from phiquant.runtime.llama import Context
from phiquant.runtime.runner import ModelRunner
from phiquant.runtime.vision import MediaPrompt
from phiquant.server import responses as shapes
from phiquant.server.errors import ApiError, bad_request, context_length_exceeded
from phiquant.server.images import IMAGE_PLACEHOLDER, load_images
from phiquant.server.limits import LimitsMiddleware, RequestCount, ServerLimits
from phiquant.server.replies import (
    ReplyFormat,
    chat_events,
    chat_prompt,
    chat_text,
    generation_failed,
    marker_tokens,
    text_events,
    token_piece,
    whole_response,
)
from phiquant.server.requests import (
    GenerationRequest,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
)
from phiquant.server.slots import GenerationJob, RunsJobs, SlotPool, job_events
from phiquant.version import __version__


@dataclass
class ServerState:
    runner: ModelRunner
    pool: SlotPool
    limits: ServerLimits
    model_id: str
    created: int
    in_progress: RequestCount = dataclasses.field(default_factory=RequestCount)
    reasoning_format: str = "deepseek"  # --reasoning-format
    markers: frozenset[int] = (
        frozenset()
    )  # reply-marker control tokens whose text is kept (replies.marker_tokens)
    allow_image_urls: bool = False  # --allow-image-urls: image_url parts may name http(s) URLs

    @property
    def max_prompt_tokens(self) -> int:
        return min(self.limits.max_prompt_tokens or self.runner.n_ctx, self.runner.n_ctx - 1)

    @property
    def max_tokens(self) -> int:
        return self.limits.max_tokens or self.runner.n_ctx


def build_app(state: ServerState, *, api_key: str | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", list_models),
            Route("/v1/models/{model_id:path}", get_model),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", text_completions, methods=["POST"]),
        ],
        middleware=[
            Middleware(LimitsMiddleware, limits=state.limits, api_key=api_key, in_progress=state.in_progress)
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.phiquant = state
    return app


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.phiquant
    return state


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos."
    elif error.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(error.detail)
    return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)


async def health(request: Request) -> Response:
    state = _state(request)
    slots = {"total": len(state.pool.slots), "idle": state.pool.idle, "waiting": state.pool.waiting}
    return JSONResponse(
        {
            "status": "ok",
            "model": state.model_id,
            "slots": slots,
            "requests_in_progress": state.in_progress.value,
        }
    )


def _model_card(state: ServerState) -> dict[str, Any]:
    runner = state.runner
    return {
        "id": state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "phiquant",
        "phiquant": {
            "version": __version__,
            "context_length": runner.n_ctx,
            "training_context_length": runner.shape.n_ctx_train,
            "slots": len(state.pool.slots),
            "gpu_layers": runner.placement.gpu_layers,
        },
    }


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(_state(request))]})


async def get_model(request: Request) -> Response:
    state = _state(request)
    _check_model(state, request.path_params["model_id"])
    return JSONResponse(_model_card(state))


def _check_model(state: ServerState, model: str) -> None:
    if model != state.model_id:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it. This server serves "
            f"`{state.model_id}`.",
            param="model",
            code="model_not_found",
        )


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    body = parse_json_body(await request.body())
    parsed = parse_chat_request(body, state.runner.model.n_vocab)
    _check_model(state, parsed.model)
    if parsed.images:
        return await _generate_with_images(request, state, parsed)
    tokens, reply = await _tokenize(
        lambda: chat_prompt(state.runner, parsed, state.model_id, state.reasoning_format)
    )
    return await _generate(request, state, parsed, tokens, "chat", reply)


async def _generate_with_images(request: Request, state: ServerState, parsed: GenerationRequest) -> Response:
    """Images decoded, the prompt rendered with the projector's marker at each image, off the loop."""

    def build() -> tuple[MediaPrompt, ReplyFormat]:
        try:
            vision = state.runner.vision()
        except PhiquantError as error:
            raise bad_request(error.message, param="messages", code="images_not_supported") from None
        images = load_images(parsed.images, allow_urls=state.allow_image_urls)
        marked = dataclasses.replace(
            parsed,
            messages=tuple(
                {**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, vision.marker)}
                for m in parsed.messages
            ),
        )
        text, reply = chat_text(state.runner, marked, state.model_id, state.reasoning_format)
        try:
            return vision.build_prompt(text, images, state.runner.text_tokens), reply
        except PhiquantError as error:
            raise bad_request(error.message, param="messages", code="invalid_image") from None

    prompt, reply = await run_in_threadpool(build)
    vision = state.runner.vision()
    try:
        return await _generate(
            request, state, parsed, prompt.positions, "chat", reply,
            evaluate=lambda context: vision.evaluate(context, prompt), release=prompt.close,
        )  # fmt: skip
    except BaseException:
        prompt.close()  # refused before a slot took the job
        raise


async def text_completions(request: Request) -> Response:
    state = _state(request)
    body = parse_json_body(await request.body())
    parsed = parse_completion_request(body, state.runner.model.n_vocab)
    _check_model(state, parsed.model)
    prompt = parsed.prompt
    if isinstance(prompt, tuple):
        tokens = list(prompt)
    else:
        tokens, _ = await _tokenize(lambda: (state.runner.text_tokens(prompt), None))
    reply = ReplyFormat(
        piece=token_piece(state.runner),
        logprobs=parsed.sampling.logprobs is not None,
        echo=_echo(state, parsed) if parsed.echo else "",
    )
    return await _generate(request, state, parsed, tokens, "text", reply)


async def _tokenize(make_tokens: Callable[[], tuple[list[int], Any]]) -> tuple[list[int], Any]:
    """Render and tokenize off the event loop: a template may take up to its time bound."""
    try:
        tokens, extra = await run_in_threadpool(make_tokens)
    except PhiquantError as error:
        raise bad_request(error.message, code="chat_template_error") from None
    if not tokens:
        raise bad_request("the prompt is empty", param="prompt")
    return tokens, extra


def _plan_max_tokens(state: ServerState, n_prompt: int, requested: int | None, where: str) -> int:
    n_ctx = state.runner.n_ctx
    if n_prompt > state.max_prompt_tokens:
        if n_prompt >= n_ctx:
            raise context_length_exceeded(n_ctx, n_prompt, requested or 1, where)
        raise bad_request(
            f"the prompt has {n_prompt} tokens; this server accepts at most {state.max_prompt_tokens} "
            "(--max-prompt-tokens)",
            param="messages" if where == "messages" else "prompt",
            code="prompt_too_long",
        )
    room = n_ctx - n_prompt
    if requested is not None and requested > room:
        raise context_length_exceeded(n_ctx, n_prompt, requested, where)
    if requested is not None and requested > state.max_tokens:
        raise bad_request(
            f"max_tokens {requested} is above this server's limit of {state.max_tokens} (--max-tokens)",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    return requested if requested is not None else min(state.pool.default_room(n_prompt), state.max_tokens)


async def _generate(
    request: Request,
    state: ServerState,
    parsed: GenerationRequest,
    tokens: list[int],
    kind: str,
    reply: ReplyFormat,
    *,
    evaluate: Callable[[Context], None] | None = None,
    release: Callable[[], None] | None = None,
) -> Response:
    where = "messages" if kind == "chat" else "prompt"
    max_tokens = _plan_max_tokens(state, len(tokens), parsed.max_tokens, where)
    options = dataclasses.replace(parsed.sampling, max_tokens=max_tokens, preserved_tokens=state.markers)
    slot = await _acquire_slot(request, state)
    if slot is None:
        return Response(status_code=499)  # the client left while queued; nobody reads this
    job = GenerationJob(
        tokens, options, state.limits.request_timeout, asyncio.get_running_loop(), choices=parsed.n
    )
    job.evaluate, job.release = evaluate, release
    slot.submit(job)  # from here on the worker frees the slot, however the response ends
    header = shapes.ResponseHeader.new(kind, state.model_id)
    if parsed.stream:
        events = chat_events if kind == "chat" else text_events
        return GenerationStream(events(header, job, parsed.include_usage, reply), job)
    completions = await _collect(request, job)
    return JSONResponse(whole_response(header, kind, reply, completions))


def _echo(state: ServerState, parsed: GenerationRequest) -> str:
    if isinstance(parsed.prompt, str):
        return parsed.prompt
    text = state.runner.model.detokenize(parsed.prompt, special=True)
    # SentencePiece vocabularies write the first word's space marker; HF's decode drops it.
    return (
        text[1:]
        if text.startswith(" ") and state.runner.gguf.get("tokenizer.ggml.add_space_prefix")
        else text
    )


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _acquire_slot(request: Request, state: ServerState) -> RunsJobs | None:
    """Queue for a slot (FIFO); None when the client disconnects while waiting."""
    limits = state.limits
    acquiring = asyncio.ensure_future(
        state.pool.acquire(max_queue=limits.max_queue, timeout=limits.queue_timeout)
    )
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    await asyncio.wait({acquiring, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if acquiring.done():
        return acquiring.result()
    acquiring.cancel()
    try:
        slot = await acquiring  # lets the pool take the waiter out of the line
    except (asyncio.CancelledError, ApiError):
        return None
    state.pool.release(slot)  # handed over just before the cancellation landed
    return None


async def _collect(request: Request, job: GenerationJob) -> list[Completion]:
    """Every choice's completion, in choice order."""
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    gone.add_done_callback(lambda _: job.cancel.set())
    completions: dict[int, Completion] = {}
    try:
        async for kind, value in job_events(job):
            if kind == "done":
                index, completion = value
                completions[index] = completion
            elif kind == "error":
                raise generation_failed(value)
        if len(completions) < job.choices:
            raise AssertionError("generation ended without a result")
        return [completions[i] for i in range(job.choices)]
    finally:
        job.cancel.set()
        gone.cancel()


class GenerationStream(StreamingResponse):
    """Server-sent events that stop the generation whenever the response ends: finished, failed,
    or cancelled because the client disconnected (Starlette cancels the streaming task)."""

    def __init__(self, events: AsyncIterator[bytes], job: GenerationJob):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel.set()


def new_state(
    runner: ModelRunner,
    pool: SlotPool,
    limits: ServerLimits,
    model_id: str | None,
    reasoning_format: str = "deepseek",
    *,
    allow_image_urls: bool = False,
) -> ServerState:
    return ServerState(
        runner, pool, limits, model_id or runner.name, int(time.time()),
        reasoning_format=reasoning_format, markers=marker_tokens(runner), allow_image_urls=allow_image_urls,
    )  # fmt: skip
