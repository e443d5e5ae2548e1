"""What every fuzz test shares: bounded hypothesis settings, a hang guard, and the one allowed failure.

A reader given any bytes must return or raise PhiquantError: any other exception is a bug (it would
reach the user as a traceback), and so is an input that takes seconds or hangs.  The suite runs in
CI with a few hundred examples per reader; set PHIQUANT_FUZZ_SCALE=50 for a long local run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings

from phiquant.errors import PhiquantError

FUZZ_SCALE = float(os.environ.get("PHIQUANT_FUZZ_SCALE", "1"))
# One example may take this long before hypothesis calls it too slow (a reader that loops on a
# crafted count shows up here); the alarm stops a real hang so the test fails instead of stalling CI.
EXAMPLE_DEADLINE = timedelta(seconds=2)
HANG_SECONDS = 20


def fuzz_settings(max_examples: int, deadline: timedelta = EXAMPLE_DEADLINE) -> settings:
    return settings(
        max_examples=max(1, int(max_examples * FUZZ_SCALE)),
        deadline=deadline,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Hang(Exception):
    """An input kept a reader busy past HANG_SECONDS."""


@contextlib.contextmanager
def hang_guard(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def accepts_or_refuses_cleanly(call: Callable[[], Any]) -> Any | PhiquantError:
    """Run `call`; return its result or the PhiquantError it raised.  Anything else propagates."""
    with hang_guard():
        try:
            return call()
        except PhiquantError as error:
            # Messages may quote text from the file (newlines included); the CLI escapes it to one line.
            assert error.message.strip(), "an error that says nothing"
            return error
