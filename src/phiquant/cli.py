"""The `phiquant` command: parse arguments, call the API, render results and progress.

One error boundary (`main`): a PhiquantError becomes one line on stderr and exit code 2; Ctrl-C
exits 130 and SIGTERM 143, after output files in progress are removed; anything else is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from phiquant import temporary_files
from phiquant.commands.output import Output, terminal_text
from phiquant.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, PhiquantError
from phiquant.version import __version__

EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same cleanup as Ctrl-C runs."""


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


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _cleanup_report() -> str:
    """Remove what an interrupted command left unfinished and say what that was, truthfully.  A second
    Ctrl-C while this runs is ignored: the command is already on its way out."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in temporary_files.HELD_SIGNALS}
    try:
        removed = temporary_files.remove_pending()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not removed:
        return "no partial output was left to remove"
    return "partial output removed: " + ", ".join(terminal_text(path.name) for path in removed)


def main(argv: Sequence[str] | None = None, *, startup_signals: Sequence[int] = ()) -> int:
    """Run one command.  `startup_signals`: signals the entry point recorded while this module was
    still importing (phiquant.__main__), acted on here, once the handlers below are in place."""
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    temporary_files.forget_removed()
    try:
        if startup_signals:
            raise Terminated() if startup_signals[0] == signal.SIGTERM else KeyboardInterrupt()
        return _run(argv)
    except Terminated:
        print(f"phiquant: terminated; {_cleanup_report()}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"phiquant: interrupted; {_cleanup_report()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
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


__all__ = ["EXIT_BAD_INPUT", "Output", "main"]
