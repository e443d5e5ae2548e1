"""From a request to the prompt, and from generated choices to OpenAI's answers, whole or streamed.

Chat prompts carry the request's tools the way the model's template takes them (runtime.tool_prompt);
a template that takes none refuses tools by the model's name.  Replies are split into reasoning, text
and tool calls by runtime.reply_parser, the same way whether streamed or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.runtime.generate import Completion, TokenLogprob
from phiquant.runtime.reply_parser import (
    MARKERS,
    ReplyPart,
    ReplyStreamParser,
    parse_reply,
    prompt_opens_reasoning,
)
from phiquant.runtime.runner import ModelRunner
from phiquant.runtime.tool_prompt import template_input, tool_style
from phiquant.server import responses as shapes
from phiquant.server.errors import SERVER_ERROR, ApiError, bad_request
from phiquant.server.requests import GenerationRequest
from phiquant.server.slots import ChoiceText, GenerationJob, job_events

REASONING_FORMATS = ("deepseek", "none")  # --reasoning-format: split into reasoning_content, or inline


@dataclass(frozen=True)
class ReplyFormat:
    """How the choices of one request are turned into answers."""

    piece: Callable[[int], bytes]
    reasoning: bool = False  # split a leading <think> section into reasoning_content
    started_in_reasoning: bool = False  # the prompt itself opened <think>
    tools: bool = False  # turn <|tool_call|> blocks into tool_calls
    logprobs: bool = False
    echo: str = ""  # /v1/completions with echo: the prompt text before each choice

    def parser(self) -> ReplyStreamParser:
        return ReplyStreamParser(
            reasoning=self.reasoning, tools=self.tools, started_in_reasoning=self.started_in_reasoning
        )


def marker_tokens(runner: ModelRunner) -> frozenset[int]:
    """The reply markers this vocabulary has as single (control) tokens: their text must be kept."""
    return runner.prompt.single_token_ids(MARKERS)


def token_piece(runner: ModelRunner) -> Callable[[int], bytes]:
    return lambda token: runner.model.token_piece(token, special=True)


def chat_prompt(
    runner: ModelRunner, request: GenerationRequest, model_id: str, reasoning_format: str
) -> tuple[list[int], ReplyFormat]:
    """The prompt's token ids and how to read the reply.  Runs the template: call it off the event loop."""
    text, reply = chat_text(runner, request, model_id, reasoning_format)
    return runner.prompt.tokenize(text), reply


def chat_text(
    runner: ModelRunner, request: GenerationRequest, model_id: str, reasoning_format: str
) -> tuple[str, ReplyFormat]:
    """The rendered prompt text and how to read the reply (image prompts tokenize the text themselves)."""
    template = runner.prompt.template
    style = tool_style(template.source if template is not None else None)
    if style is None:
        _refuse_tools(request, model_id)
    rendered = template_input(request.messages, request.tools.tools, style)
    try:
        text = runner.prompt.render(rendered.messages, **rendered.variables)
    except PhiquantError as error:
        raise bad_request(error.message, code="chat_template_error") from None
    reasoning = reasoning_format != "none"
    return text, ReplyFormat(
        piece=token_piece(runner),
        reasoning=reasoning,
        started_in_reasoning=reasoning and prompt_opens_reasoning(text),
        tools=bool(request.tools.tools) and request.tools.choice != "none",
        logprobs=request.sampling.logprobs is not None,
    )


def _refuse_tools(request: GenerationRequest, model_id: str) -> None:
    if request.tools.tools:
        raise bad_request(
            f"The model `{model_id}` has a chat template without tool support, so it cannot be given "
            "'tools' (Phi-4-mini-instruct and Phi-4-mini-reasoning take them).",
            param="tools",
            code="tools_not_supported",
        )
    for index, message in enumerate(request.messages):
        if message["role"] == "tool" or message.get("tool_calls"):
            raise bad_request(
                f"The model `{model_id}` has a chat template without tool support, so messages cannot hold "
                "tool calls or tool results.",
                param=f"messages[{index}]",
                code="tools_not_supported",
            )


def generation_failed(error: Exception) -> ApiError:
    message = error.message if isinstance(error, PhiquantError) else f"{type(error).__name__}: {error}"
    return ApiError(500, f"generation failed: {message}", SERVER_ERROR)


def whole_response(
    header: shapes.ResponseHeader, kind: str, reply: ReplyFormat, completions: Sequence[Completion]
) -> dict[str, Any]:
    choices = []
    for index, completion in enumerate(completions):
        if kind == "chat":
            logprobs = shapes.chat_logprobs(completion.logprobs, reply.piece) if reply.logprobs else None
            parsed = parse_reply(
                completion.text, reasoning=reply.reasoning, tools=reply.tools,
                started_in_reasoning=reply.started_in_reasoning,
            )  # fmt: skip
            choices.append(shapes.chat_choice(index, completion, parsed, logprobs))
        else:
            logprobs = (
                shapes.text_logprobs(completion.logprobs, reply.piece, len(reply.echo))
                if reply.logprobs
                else None
            )
            choices.append(shapes.text_choice(index, completion, reply.echo + completion.text, logprobs))
    return shapes.completion_response(header, choices, completions)


class _ChatChoiceStream:
    """The chunks of one streamed chat choice."""

    def __init__(self, header: shapes.ResponseHeader, index: int, reply: ReplyFormat):
        self.header, self.index, self.reply = header, index, reply
        self.parser = reply.parser()
        self.calls = 0

    def chunk(
        self, delta: dict[str, Any], logprobs: list[TokenLogprob] | None = None, reason: str | None = None
    ) -> bytes:
        shaped = shapes.chat_logprobs(logprobs, self.reply.piece) if logprobs else None
        return shapes.server_sent_event(shapes.chat_chunk(self.header, delta, reason, self.index, shaped))

    def parts(self, parts: list[ReplyPart], logprobs: list[TokenLogprob]) -> list[bytes]:
        events = []
        for part in parts:
            if part.call is not None:
                delta: dict[str, Any] = {"tool_calls": [shapes.tool_call(part.call, self.calls)]}
                self.calls += 1
            else:
                delta = {"reasoning_content" if part.kind == "reasoning" else "content": part.text}
            events.append(self.chunk(delta, logprobs))
            logprobs = []
        if logprobs:  # tokens whose text is still held back: their log-probabilities go out now
            events.append(self.chunk({"content": ""}, logprobs))
        return events

    def text(self, value: ChoiceText) -> list[bytes]:
        return self.parts(self.parser.push(value.text), value.logprobs)

    def done(self, completion: Completion) -> list[bytes]:
        events = self.parts(self.parser.finish(), [])
        return [*events, self.chunk({}, reason=shapes.finish_reason(completion, self.calls > 0))]


async def chat_events(
    header: shapes.ResponseHeader, job: GenerationJob, include_usage: bool, reply: ReplyFormat
) -> AsyncIterator[bytes]:
    streams = [_ChatChoiceStream(header, i, reply) for i in range(job.choices)]
    for stream in streams:
        yield stream.chunk({"role": "assistant", "content": ""})
    completions: dict[int, Completion] = {}
    async for kind, value in job_events(job):
        if kind == "text":
            for event in streams[value.index].text(value):
                yield event
        elif kind == "error":
            yield shapes.server_sent_event(generation_failed(value).body())
            break
        else:
            index, completion = value
            completions[index] = completion
            for event in streams[index].done(completion):
                yield event
    if include_usage and len(completions) == job.choices:
        ordered = [completions[i] for i in range(job.choices)]
        yield shapes.server_sent_event(shapes.usage_chunk(header, ordered, "chat.completion.chunk"))
    yield shapes.DONE_EVENT


async def text_events(
    header: shapes.ResponseHeader, job: GenerationJob, include_usage: bool, reply: ReplyFormat
) -> AsyncIterator[bytes]:
    offsets = [len(reply.echo)] * job.choices
    if reply.echo:
        for index in range(job.choices):
            yield shapes.server_sent_event(shapes.text_chunk(header, reply.echo, index=index))
    completions: dict[int, Completion] = {}
    async for kind, value in job_events(job):
        if kind == "text":
            logprobs = None
            if value.logprobs:
                logprobs = shapes.text_logprobs(value.logprobs, reply.piece, offsets[value.index])
                offsets[value.index] += sum(len(t) for t in logprobs["tokens"])
            yield shapes.server_sent_event(shapes.text_chunk(header, value.text, None, value.index, logprobs))
        elif kind == "error":
            yield shapes.server_sent_event(generation_failed(value).body())
            break
        else:
            index, completion = value
            completions[index] = completion
            reason = shapes.finish_reason(completion)
            yield shapes.server_sent_event(shapes.text_chunk(header, "", reason, index))
    if include_usage and len(completions) == job.choices:
        ordered = [completions[i] for i in range(job.choices)]
        yield shapes.server_sent_event(shapes.usage_chunk(header, ordered, "text_completion"))
    yield shapes.DONE_EVENT
