"""`phiquant chat` shows a reasoning model's <think> section apart from the answer: on stderr (dimmed on a
terminal), never on stdout, however the pieces arrive."""

from __future__ import annotations

import io

from phiquant.commands.chat import _ReasoningDisplay


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _show(pieces: list[str], side: io.StringIO) -> str:
    out = io.StringIO()
    display = _ReasoningDisplay(out, side)
    for piece in pieces:
        display.show(piece)
    display.finish()
    return out.getvalue()


def test_reasoning_goes_to_stderr_and_the_answer_alone_to_stdout() -> None:
    side = io.StringIO()
    assert _show(["<thi", "nk>2+2", " is 4.</th", "ink>\n\nIt is ", "4."], side) == "It is 4."
    assert side.getvalue() == "[reasoning] 2+2 is 4.\n"


def test_on_a_terminal_the_reasoning_is_dimmed() -> None:
    side = _Terminal()
    assert _show(["<think>hmm</think>ok"], side) == "ok"
    assert side.getvalue() == "\x1b[2m[reasoning] hmm\x1b[0m\n"


def test_replies_without_reasoning_are_printed_as_they_are() -> None:
    side = io.StringIO()
    assert _show(["Hello ", "<think> is a tag"], side) == "Hello <think> is a tag"
    assert side.getvalue() == ""
