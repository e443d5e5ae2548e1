"""The `phiquant` command's entry point (`python -m phiquant` and the console script).

Ctrl-C and SIGTERM are answered from the first moment: before `main` takes over they end the
command with its exit code (nothing has been written yet), not with a traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

# Said as phiquant.cli says it once it runs; here nothing can have been written yet.
NOTHING_WRITTEN = "no partial output was left to remove"


def _exit_terminated(signum: int, frame: object) -> NoReturn:
    sys.stderr.write(f"phiquant: terminated; {NOTHING_WRITTEN}\n")
    raise SystemExit(143)


def run() -> NoReturn:
    signal.signal(signal.SIGTERM, _exit_terminated)
    try:
        from phiquant.cli import main
    except KeyboardInterrupt:
        sys.stderr.write(f"phiquant: interrupted; {NOTHING_WRITTEN}\n")
        raise SystemExit(130) from None
    raise SystemExit(main())


if __name__ == "__main__":
    run()
