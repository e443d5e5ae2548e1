"""The one exception type for problems the user can fix.

The CLI prints a PhiquantError as a single line on stderr and exits with its exit code (2 for bad
input or usage).  Anything else that escapes is a bug in phiquant and keeps its traceback.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 3  # phiquant batch: some models failed, the others are done
EXIT_INTERRUPTED = 130


class PhiquantError(Exception):
    """A problem with the user's input, files or environment, with a message that says what to do."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UnsupportedModelError(PhiquantError):
    """A model phiquant recognises but cannot convert, or does not know at all."""


def make_output_directory(directory: str | os.PathLike[str]) -> None:
    """Create the directory results go to (and its parents), or say in one line why it cannot be."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise PhiquantError(f"cannot create the output directory: {error.strerror}", path=directory) from None
