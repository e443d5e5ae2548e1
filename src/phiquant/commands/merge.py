"""`phiquant merge`: a split model's shards to the one GGUF file phiquant writes unsplit."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.gguf_io import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "first_shard",
        metavar="FIRST_SHARD",
        help="the first shard, NAME-00001-of-0000N.gguf (the others are found beside it by name)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT.gguf",
        help="the merged file, or a folder for it (default: NAME.gguf beside the shards)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT.gguf if it exists")


def run(args: argparse.Namespace, output: Output) -> int:
    result = api.merge(args.first_shard, args.output, overwrite=args.force, reporter=output.reporter())

    def render(console: Any) -> None:
        console.print(
            f"wrote {result.path} ({format_bytes(result.file_size)}, {result.n_tensors} tensors) from "
            f"{len(result.shards)} shards in {result.seconds:.1f} s",
            highlight=False,
            markup=False,  # a path like "[/x].gguf" is text, not rich markup
            soft_wrap=True,
        )

    output.result(result, render)
    return 0


COMMAND = Command(
    name="merge",
    summary="join a split model's shards into one GGUF file",
    description=(
        "Join the shards of a split model (written with --split-max-size or --split-max-tensors, or by "
        "llama-gguf-split --split) into one GGUF file, byte for byte the file phiquant writes unsplit: the "
        "first shard's keys without split.*, every tensor in order, copied as is. Every shard is checked "
        "first. For Ollama, which reads one file; unlike llama-gguf-split --merge, no split.* keys stay."
    ),
    add_arguments=add_arguments,
    run=run,
)
