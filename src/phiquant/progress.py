"""How long-running library code reports progress without printing.

Library functions take a `Reporter` and call it; the CLI passes one that draws a rich progress bar
(or nothing in a pipe or under --json), a notebook can pass its own, and the default is silent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reporter:
    """Receives progress from library code.  Subclass and override what you want to show."""

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        """A new phase begins; `total` is in `unit` (e.g. bytes) or None when unknown."""

    def advance(self, amount: float) -> None:
        """`amount` more units of the current phase are done."""

    def note(self, message: str) -> None:
        """A detail line (shown with --verbose)."""

    def warn(self, message: str) -> None:
        """Something the user should see even without --verbose."""

    def finish(self) -> None:
        """The current phase is over."""


SILENT = Reporter()


@dataclass
class RecordingReporter(Reporter):
    """Keeps every message; handy in tests and notebooks."""

    def __post_init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        self.events.append(("start", (task, total, unit)))

    def advance(self, amount: float) -> None:
        self.events.append(("advance", amount))

    def note(self, message: str) -> None:
        self.events.append(("note", message))

    def warn(self, message: str) -> None:
        self.events.append(("warn", message))

    def finish(self) -> None:
        self.events.append(("finish", None))

    def messages(self, kind: str) -> list[str]:
        return [str(value) for event, value in self.events if event == kind]
