"""The `phiquant` command: parse arguments, call the API, render results and progress.

One error boundary (`main`): a PhiquantError becomes one line on stderr and exit code 2; Ctrl-C
exits 130 and SIGTERM 143, after output files in progress are removed; anything else is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import enum
import json
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from phiquant.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, PhiquantError
from phiquant.progress import Reporter
from phiquant.version import __version__

EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same cleanup as Ctrl-C runs."""


class CliReporter(Reporter):
    """Progress as a rich bar with ETA on a terminal; nothing in a pipe or in JSON mode.
    Warnings always go to stderr (unless --quiet); notes only with --verbose."""

    def __init__(self, *, show_progress: bool, verbose: bool, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.show_progress = show_progress and self.console.is_terminal
        self.verbose = verbose
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        if not self.show_progress:
            return
        from rich import progress as rp

        columns: list[Any] = [rp.TextColumn("{task.description}"), rp.BarColumn(), rp.TaskProgressColumn()]
        if unit == "B":
            columns.append(rp.TransferSpeedColumn())
        columns += [rp.TimeElapsedColumn(), rp.TimeRemainingColumn()]
        self.finish()
        self._progress = rp.Progress(*columns, console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(task, total=total)

    def advance(self, amount: float) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def note(self, message: str) -> None:
        if self.verbose:
            self.console.print(message, markup=False, highlight=False)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(
                f"warning: {message}", markup=False, highlight=False, style="yellow", soft_wrap=True
            )

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Output:
    """One sink for results: a human rendering, one JSON document (--json), or nothing (--quiet)."""

    def __init__(self, args: argparse.Namespace):
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.verbose = bool(getattr(args, "verbose", False))

    def reporter(self) -> CliReporter:
        return CliReporter(
            show_progress=not (self.json or self.quiet), verbose=self.verbose, quiet=self.quiet
        )

    def result(self, data: Any, render: Callable[[Any], None]) -> None:
        if self.json:
            print(json.dumps(to_jsonable(data), indent=2))
        elif not self.quiet:
            from rich.console import Console

            render(Console())


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    return value


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    group.add_argument("-v", "--verbose", action="store_true", help="print per-tensor details")
    group.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parent


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with each option's value named once (`-o, --output FILE`), the style Python
    3.13 adopted, on every Python: the README's CLI reference is this text (phiquant.docs)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


def build_parser() -> argparse.ArgumentParser:
    from phiquant.commands import COMMANDS

    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="phiquant",
        description="Convert, quantize, evaluate and run Microsoft Phi models as llama.cpp GGUF files.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad input or usage, 130 interrupted (143 on SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"phiquant {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = common_options()
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=command.description,
            parents=[parent],
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def terminal_text(value: object) -> str:
    """`value` as text a terminal shows literally: the control characters a crafted file may carry
    (ANSI escapes, newlines, bidi overrides) are escaped, not obeyed, and an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    output = Output(args)
    try:
        return int(args.run(args, output) or EXIT_OK)
    except PhiquantError as exc:
        if args.debug:
            raise
        print(f"phiquant: error: {terminal_text(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`phiquant inspect x --json | head`): not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK
    except Terminated:
        print("phiquant: terminated; partial output removed", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("phiquant: interrupted; partial output removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["EXIT_BAD_INPUT", "Output", "main"]
