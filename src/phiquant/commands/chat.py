"""`phiquant chat`: an interactive conversation in the terminal.

The answer is generated in a worker thread while the main thread prints it; during an answer Ctrl-C
sets the worker's cancel flag (it stops at the next token) instead of raising, so the session and its
KV cache stay consistent.  Ctrl-C at the prompt does not end the session either; /exit or Ctrl-D does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.commands.runtime_flags import (
    add_model_arguments,
    add_sampling_arguments,
    runner_options,
    sampling_options,
)
from phiquant.errors import PhiquantError
from phiquant.runtime.reply_parser import ReplyPart, ReplyStreamParser, parse_reply

if TYPE_CHECKING:
    from phiquant.runtime.chat import ChatSession

PROMPT = ">>> "
HELP = "/reset clears the conversation, /exit (or Ctrl-D) quits; Ctrl-C stops an answer."
_END = object()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", help="system message that starts the conversation")
    parser.add_argument(
        "--image",
        action="append",
        metavar="FILE",
        help="an image (PNG, JPEG or WebP) the conversation is about, for a vision model; repeat for several. "
        "They go before the first user message",
    )
    add_sampling_arguments(
        parser, max_tokens_help="longest answer in tokens (default: until the model ends it)"
    )


def run(args: argparse.Namespace, output: Output) -> int:
    from phiquant.runtime.chat import ChatSession
    from phiquant.runtime.images import read_image_file

    sampling = sampling_options(args)
    images = [read_image_file(path) for path in args.image or []]  # checked before the model loads
    with api.load(args.model, runner_options(args), reporter=output.reporter()) as runner:
        if images:
            runner.vision()  # a model without projector is refused now, not at the first message
        session = ChatSession(runner, sampling, system=args.system, images=images)
        if not output.quiet and not output.json:
            print(
                f"Chatting with {runner.name} (context {runner.n_ctx} tokens; {runner.placement.describe()}).\n{HELP}",
                file=sys.stderr,
            )
        try:
            _loop(session, json_lines=output.json)
        finally:
            session.close()
    return 0


def _loop(session: ChatSession, *, json_lines: bool) -> None:
    _enable_line_editing()
    while True:
        try:
            line = input("" if json_lines else PROMPT)
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D to quit)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        try:
            _answer(session, line, sys.stdout, json_lines=json_lines)
        except PhiquantError as error:
            print(f"phiquant: error: {error}", file=sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C before the answer began: nothing to stop
            print(" [stopped]", file=sys.stderr)


def _answer(session: ChatSession, text: str, out: TextIO, *, json_lines: bool) -> None:
    pieces: queue.Queue[Any] = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            for piece in session.reply(text, cancel=cancel):
                pieces.put(piece)
        except PhiquantError as error:
            pieces.put(error)
        finally:
            pieces.put(_END)  # also after a bug, whose traceback the thread prints

    # While the answer runs, Ctrl-C only asks the worker to stop (at the next token); it raises
    # nothing, so it cannot land between two statements and leave the session half updated.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    display = _ReasoningDisplay(out, sys.stderr)
    try:
        worker = threading.Thread(target=work, name="phiquant-chat", daemon=True)
        worker.start()
        failure = None
        while (item := _next(pieces)) is not _END:
            if isinstance(item, PhiquantError):
                failure = item
            elif not json_lines:
                display.show(item)
        if not json_lines:
            display.finish()
        worker.join()
        if failure is not None:
            raise failure
    finally:
        signal.signal(signal.SIGINT, previous)
    last = session.last
    if json_lines and last is not None:
        reply = parse_reply(last.text, reasoning=True, tools=False)
        record: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning is not None:
            record["reasoning_content"] = reply.reasoning
        record["finish_reason"] = last.finish_reason
        record |= {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        out.write(" [stopped]\n" if cancel.is_set() else "\n")
    out.flush()


class _ReasoningDisplay:
    """A reasoning model's <think> section goes to stderr, dimmed on a terminal, so the answer on stdout
    stays the answer alone; the answer starts on a line of its own."""

    DIM, RESET = "\x1b[2m", "\x1b[0m"

    def __init__(self, out: TextIO, side: TextIO):
        self.out, self.side = out, side
        self.parser = ReplyStreamParser(reasoning=True, tools=False)
        self.dim = side.isatty()
        self.reasoned = False

    def show(self, text: str) -> None:
        self._write(self.parser.push(text))

    def finish(self) -> None:
        self._write(self.parser.finish())
        if self.reasoned:
            self._end_reasoning()

    def _write(self, parts: list[ReplyPart]) -> None:
        for part in parts:
            if part.kind == "reasoning":
                if not self.reasoned:
                    self.side.write((self.DIM if self.dim else "") + "[reasoning] ")
                    self.reasoned = True
                self.side.write(part.text)
                self.side.flush()
            else:
                if self.reasoned:
                    self._end_reasoning()
                self.out.write(part.text)
                self.out.flush()

    def _end_reasoning(self) -> None:
        self.side.write((self.RESET if self.dim else "") + "\n")
        self.side.flush()
        self.reasoned = False


def _next(pieces: queue.Queue[Any]) -> Any:
    while True:
        try:
            return pieces.get(timeout=0.1)  # a timeout keeps the main thread responsive to signals
        except queue.Empty:
            continue


def _enable_line_editing() -> None:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (input() gains history and editing on terminals)


COMMAND = Command(
    name="chat",
    summary="chat with a model in the terminal",
    description=(
        "An interactive chat: answers stream as they are generated, the conversation is kept between turns "
        "(its KV cache too), prompts are built with the model's own chat template, and every "
        "end-of-generation token ends the answer without being shown. " + HELP
    ),
    add_arguments=add_arguments,
    run=run,
)
