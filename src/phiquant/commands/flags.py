"""argparse options built from request fields (workflows.flags): each flag is written once, on its field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

from phiquant.workflows.flags import Flag, flag_fields


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    parts: Sequence[type],
    only: Collection[str] | None = None,
) -> None:
    """One option per field of `parts` (or of the fields named in `only`), in the fields' order; fields
    whose flags share an `exclusive` name form one mutually exclusive group."""
    groups: dict[str, Any] = {}
    for part in parts:
        for field, flag in flag_fields(part):
            if only is not None and field.name not in only:
                continue
            target = parser
            if flag.exclusive is not None:
                if flag.exclusive not in groups:
                    groups[flag.exclusive] = parser.add_mutually_exclusive_group()
                target = groups[flag.exclusive]
            target.add_argument(*flag.names, **_argument(field, flag))


def _argument(field: dataclasses.Field[Any], flag: Flag) -> dict[str, Any]:
    argument: dict[str, Any] = {"help": flag.help}
    if not flag.names[0].startswith("-"):
        return {**argument, "metavar": flag.metavar}  # positional: its name is the field's
    argument["dest"] = field.name
    if field.default is False:
        return {**argument, "action": "store_true"}
    argument["metavar"] = flag.metavar
    if flag.repeat:
        return {**argument, "action": "append", "default": []}
    has_default = field.default is not dataclasses.MISSING
    return {
        **argument,
        "default": field.default if has_default else None,
        **({"type": flag.type} if flag.type is not None else {}),
        **({"choices": flag.choices} if flag.choices is not None else {}),
    }


def flag_values(args: argparse.Namespace, parts: Sequence[type]) -> dict[str, Any]:
    """The fields' values as the command line gave them, each text parsed by its flag's `parse`."""
    values: dict[str, Any] = {}
    for part in parts:
        for field, flag in flag_fields(part):
            value = getattr(args, field.name)
            if flag.parse is not None and value is not None:
                value = [flag.parse(v) for v in value] if flag.repeat else flag.parse(value)
            values[field.name] = value
    return values
