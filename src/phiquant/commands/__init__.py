"""The CLI's commands, one module per verb; `COMMANDS` is the order `phiquant --help` lists them."""

from __future__ import annotations

from phiquant.commands.command import Command


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
        merge,
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
        merge.COMMAND,
        generate.COMMAND,
        chat.COMMAND,
        serve.COMMAND,
        ollama.COMMAND,
        card.COMMAND,
        batch.COMMAND,
        demo.COMMAND,
    ]


COMMANDS: list[Command] = _all_commands()

__all__ = ["COMMANDS", "Command"]
