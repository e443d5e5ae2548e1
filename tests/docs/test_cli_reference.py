"""The README's CLI reference is what `phiquant --help` prints today (regenerate it with
`python -m phiquant.docs.cli_reference --write README.md`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from phiquant.cli import build_parser
from phiquant.commands import COMMANDS
from phiquant.docs.cli_reference import END, START, WIDTH, main, reference_markdown, replace_reference
from tests.cli.run import cli_environment

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_blocks() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(START) : text.index(END)]
    return {
        name: block + "\n"
        for name, block in re.findall(r"### `([^`]+)`\n\n.*?\n\n```text\n(.*?)\n```", section, re.DOTALL)
    }


def _words(text: str) -> list[str]:
    return text.split()


def test_readme_reference_is_current() -> None:
    """Every command, option, metavar and help word as the parsers say today.  Compared word by word,
    so the line wrapping of another Python's argparse does not count as drift; the test below checks
    the exact bytes on this one."""
    text = README.read_text(encoding="utf-8")
    assert _words(replace_reference(text, reference_markdown())) == _words(text), (
        "README.md's CLI reference is out of date: run python -m phiquant.docs.cli_reference --write README.md"
    )


def test_readme_blocks_equal_real_help_output() -> None:
    """Each block is what the real command prints (not only what the generator says), word for word."""
    blocks = _readme_blocks()
    assert set(blocks) == {"phiquant", *(f"phiquant {c.name}" for c in COMMANDS)}
    environment = {**cli_environment(), "COLUMNS": str(WIDTH + 2)}
    for name, block in blocks.items():
        args = name.split()[1:]
        result = subprocess.run(
            [sys.executable, "-m", "phiquant", *args, "--help"],
            capture_output=True,
            text=True,
            env=environment,
        )
        assert result.returncode == 0, result.stderr
        assert _words(result.stdout) == _words(block), f"{name} --help differs from README.md"


def test_check_mode_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{START}\nold text\n{END}\noutro\n")
    assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith("intro\n") and stale.read_text().endswith("\noutro\n")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_the_scripting_options(command: object) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    options = {s for a in subparsers.choices[command.name]._actions for s in a.option_strings}  # type: ignore[attr-defined]
    assert {"--json", "-q", "--quiet", "-v", "--verbose"} <= options
