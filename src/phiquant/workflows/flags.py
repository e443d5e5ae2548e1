"""The command-line flag of a request field, declared on the field itself.

A request dataclass (workflows.quantize_request) names each field's flag in its metadata; the CLI
builds its argparse options from those fields (commands/flags.py), so a flag's name, help text and
default are written once, where the field is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

METADATA_KEY = "phiquant.flag"
PART_KEY = "phiquant.part"  # a field holding a nested request part, whose own fields carry the flags


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # ("-t", "--type"), or ("source",) for a positional argument
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None  # argparse's conversion (int, float): its own exit-2 error
    parse: Callable[[str], Any] | None = None  # text -> field value, raising PhiquantError (one line)
    repeat: bool = False  # the flag may be given again; the field holds a tuple of the values
    choices: tuple[str, ...] | None = None
    exclusive: str | None = None  # flags sharing this name form one argparse mutually exclusive group


def flag(default: Any, flag: Flag) -> Any:
    """A dataclass field with its flag (`default` as dataclasses.field's)."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: flag})


def required(flag: Flag) -> Any:
    """A dataclass field without a default, with its flag."""
    return dataclasses.field(metadata={METADATA_KEY: flag})


def part(default: Any) -> Any:
    """A dataclass field holding a nested request part (its fields have the flags)."""
    return dataclasses.field(default=default, metadata={PART_KEY: True})


def flag_fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Flag]]:
    """Each field of `cls` with its flag; a field without one (and not a nested part) is a mistake in
    `cls`, refused here."""
    for field in dataclasses.fields(cls):
        if field.metadata.get(PART_KEY):
            continue
        declared = field.metadata.get(METADATA_KEY)
        if not isinstance(declared, Flag):
            raise TypeError(f"{cls.__name__}.{field.name} declares no command-line flag")
        yield field, declared
