"""The `phiquant` command's entry point (`python -m phiquant` and the console script).

Ctrl-C and SIGTERM are answered from the first moment.  While the CLI's modules import, a signal is
only recorded (a handler raising inside an import can surface as another error, such as a dataclass's
RuntimeError); `main` then acts on it with its exit code and closing line, before anything is written.
"""

from __future__ import annotations

import signal
from typing import NoReturn


def run() -> NoReturn:
    caught: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: caught.append(number))
    from phiquant.cli import main

    # main installs its own handlers first; whatever was recorded until then (the list stays live) is
    # acted on inside its error boundary.
    code = main(startup_signals=caught)
    # While Python shuts down it puts the default (fatal) action back for signals that have Python
    # handlers; the command's work is done and committed, so a signal now is ignored instead.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
