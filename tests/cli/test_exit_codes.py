"""The exit codes scripts rely on, as the README's table documents them: 0 ok, 1 internal error (a bug:
traceback kept), 2 bad input or usage (one line), 130 interrupted (tests/cli/test_interrupts.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from phiquant.errors import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED
from tests.cli.run import assert_one_line_error, cli_environment, run_phiquant

README = Path(__file__).resolve().parents[2] / "README.md"


def test_documented_codes_are_the_constants() -> None:
    text = README.read_text(encoding="utf-8")
    for code in (EXIT_OK, EXIT_INTERNAL_ERROR, EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_INTERRUPTED, 143):
        assert f"\n| {code} | " in text


def test_ok_and_usage_and_bad_input() -> None:
    assert run_phiquant("--version").returncode == EXIT_OK
    usage = run_phiquant("quantize")  # -t is required
    assert usage.returncode == EXIT_BAD_INPUT and "Traceback" not in usage.stderr
    assert_one_line_error(run_phiquant("inspect", "no-such-file.gguf"), "no-such-file.gguf")


def test_a_bug_exits_1_with_its_traceback(tmp_path: Path) -> None:
    """An exception that is not a PhiquantError is not dressed up as bad input."""
    code = (
        "import sys\n"
        "from phiquant import api, cli\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('simulated bug')\n"
        "api.inspect = broken\n"
        "sys.exit(cli.main(['inspect', 'x.gguf']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_environment(), cwd=tmp_path
    )
    assert result.returncode == EXIT_INTERNAL_ERROR
    assert "Traceback" in result.stderr and "RuntimeError: simulated bug" in result.stderr
