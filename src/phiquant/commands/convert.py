"""`phiquant convert`: a Hugging Face Phi checkpoint directory to one GGUF file."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.commands.source_flags import add_checkpoint_reading_arguments, add_split_arguments
from phiquant.gguf_io import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SRC",
        help="Hugging Face model directory, or a model id (org/name[@revision]) in the local Hugging Face cache",
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.gguf", help="output file (default: <Model-Name>-<TYPE>.gguf here)"
    )
    parser.add_argument(
        "--outtype",
        default="auto",
        choices=api.CONVERT_OUTTYPES,
        help="tensor type for weight matrices; auto keeps the checkpoint's precision (BF16 stays BF16)",
    )
    add_checkpoint_reading_arguments(parser)
    add_split_arguments(parser)
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="write weights holding NaN/Inf instead of refusing"
    )


def run(args: argparse.Namespace, output: Output) -> int:
    result = api.convert(
        args.source,
        args.output,
        args.outtype,
        allow_nonfinite=args.allow_nonfinite,
        allow_pickle=args.allow_pickle,
        text_only=args.text_only,
        split_max_size=args.split_max_size,
        split_max_tensors=args.split_max_tensors,
        mmproj_type=args.mmproj_type,
        reporter=output.reporter(),
    )

    def render(console: Any) -> None:
        console.print(
            f"wrote {result.path} ({result.outtype.upper()}, {format_bytes(result.file_size)}, "
            f"{result.n_tensors} tensors{f', {len(result.shards)} shards' if result.shards else ''}) "
            f"in {result.seconds:.1f} s",
            highlight=False,
            markup=False,  # a path like "[/x].gguf" is text, not rich markup
        )
        if result.mmproj is not None:
            console.print(f"wrote {result.mmproj} (vision projector)", highlight=False, markup=False)

    output.result(result, render)
    return 0


COMMAND = Command(
    name="convert",
    summary="convert a Hugging Face Phi checkpoint to GGUF",
    description=(
        "Convert a Hugging Face Phi checkpoint directory (safetensors, sharded or not; PyTorch pickles with --allow-pickle) to a GGUF file "
        "that llama.cpp runs like transformers runs the original. Weights stream from memory maps; "
        "no torch needed."
    ),
    add_arguments=add_arguments,
    run=run,
)
