"""The one output sink every command writes through: a human rendering, one JSON document (--json), or
nothing (--quiet); progress as a rich bar on a terminal; text from files made safe for a terminal."""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from phiquant.progress import Reporter


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


def terminal_text(value: object) -> str:
    """`value` as text a terminal shows literally: the control characters a crafted file may carry
    (ANSI escapes, newlines, bidi overrides) are escaped, not obeyed, and an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
