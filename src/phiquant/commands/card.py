"""`phiquant card`: a Hugging Face model card (README.md) for a folder of GGUF files."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="folder of GGUF files (and their phiquant report)")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the card (default: DIR/README.md)"
    )
    parser.add_argument(
        "--base-model",
        metavar="ORG/NAME",
        help="the Hugging Face id of the model the files came from (default: from the files' metadata)",
    )
    parser.add_argument(
        "--license", help="license id for the front matter (default: the files' general.license; mit for Phi)"
    )
    parser.add_argument(
        "--quantized-by", default="phiquant", metavar="NAME", help="who made the files (default: phiquant)"
    )
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="an extra tag; repeatable")
    parser.add_argument("--stdout", action="store_true", help="print the card instead of writing it")


def run(args: argparse.Namespace, output: Output) -> int:
    card = api.model_card(
        args.directory,
        args.output,
        base_model=args.base_model,
        license=args.license,
        quantized_by=args.quantized_by,
        tags=args.tag,
        write=not args.stdout,
    )
    reporter = output.reporter()
    for warning in card.warnings:
        reporter.warn(warning)

    def render(console: Any) -> None:
        if card.path is None:
            print(card.text, end="")  # the card itself, byte for byte
            return
        quality = (
            f"quality of {len(card.quality)} files from {card.report.name}"
            if card.report
            else "no evaluation"
        )
        console.print(
            f"wrote {card.path} ({len(card.files)} files, {quality})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    output.result(card, render)
    return 0


COMMAND = Command(
    name="card",
    summary="write a Hugging Face model card for a folder of GGUF files",
    description=(
        "Write a model card (README.md with Hugging Face front matter: base_model, license, quantized_by, "
        "tags) for a folder of GGUF files: the file table, the quality table and plot from the folder's "
        "`phiquant report`, the commands that make the files and the versions that made them."
    ),
    add_arguments=add_arguments,
    run=run,
)
