"""The CLI's commands, one module per verb; `COMMANDS` is the order `phiquant --help` lists them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phiquant.cli import Output


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Output], int]


def _all_commands() -> list[Command]:
    from phiquant.commands import (
        batch,
        card,
        chat,
        convert,
        demo,
        generate,
        imatrix,
        inspect,
        ollama,
        quantize,
        report,
        serve,
    )
    from phiquant.commands import eval as eval_command

    return [
        convert.COMMAND,
        quantize.COMMAND,
        imatrix.COMMAND,
        eval_command.COMMAND,
        report.COMMAND,
        inspect.COMMAND,
        generate.COMMAND,
        chat.COMMAND,
        serve.COMMAND,
        ollama.COMMAND,
        card.COMMAND,
        batch.COMMAND,
        demo.COMMAND,
    ]


COMMANDS: list[Command] = _all_commands()
