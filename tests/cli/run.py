"""Running the real `phiquant` command in a subprocess, as a user or a script would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def cli_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def restore_default_sigint() -> None:
    """Run in the child before exec: a shell that starts the test run in the background (`pytest &`)
    hands every child SIGINT ignored, and Python then installs no KeyboardInterrupt handler; a user at a
    terminal gets the default, which is what the interrupt tests mean to exercise."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_phiquant(
    *args: str | Path, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phiquant", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_environment(),
        timeout=timeout,
    )


def start_phiquant(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "phiquant", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=cli_environment(),
        preexec_fn=restore_default_sigint,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, one line on stderr that starts with 'phiquant: error:', names what it must."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("phiquant: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
