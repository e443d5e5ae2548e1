"""What a command is: its verb, its help, how it adds its arguments and how it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from phiquant.commands.output import Output


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Output], int]
