"""`phiquant inspect`: what a GGUF file holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output, terminal_text
from phiquant.gguf_io import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.gguf", help="GGUF file")


def run(args: argparse.Namespace, output: Output) -> int:
    report = api.inspect(args.file)

    def render(console: Any) -> None:
        from rich.table import Table
        from rich.text import Text

        # Everything shown comes from the file: printed as plain text (no rich markup, control
        # characters escaped), so a name like "[/x]" or an ANSI escape cannot break or paint the output.
        def line(text: str) -> None:
            console.print(terminal_text(text), markup=False, highlight=False, soft_wrap=True)

        line(f"{report.path}  {format_bytes(report.file_size)}")
        if report.shards:
            line(
                f"split model: {len(report.shards)} shards ({', '.join(Path(s).name for s in report.shards)})"
            )
        line(
            f"architecture {report.architecture}  name {report.name!r}  file type {report.file_type}  "
            f"GGUF v{report.gguf_version}"
        )
        line(
            f"{report.n_tensors} tensors, {report.n_parameters:,} parameters, "
            f"{report.bits_per_weight:.3f} bits per weight"
        )
        table = Table("type", "tensors", "parameters", "bytes", "share")
        for usage in report.types:
            share = usage.nbytes / report.tensor_bytes if report.tensor_bytes else 0.0
            table.add_row(
                Text(usage.type),
                str(usage.n_tensors),
                f"{usage.n_elements:,}",
                format_bytes(usage.nbytes),
                f"{share:.1%}",
            )
        console.print(table)
        line("hyper-parameters: " + "  ".join(f"{k}={v}" for k, v in report.hyperparameters.items()))
        if report.architecture == "clip":
            line("a vision projector (mmproj): give it with --mmproj, or keep it beside its language model")
            return
        if report.mmproj:
            line(f"vision projector: {report.mmproj}")
        tok = report.tokenizer
        line(
            f"tokenizer: {tok['model']} ({tok['pre']}), {tok['n_tokens']} tokens, add_bos={tok['add_bos_token']}"
        )
        ends = ", ".join(f"{e.id} {e.text!r} ({'/'.join(e.roles)})" for e in report.end_of_generation)
        line(f"end of generation: {ends or 'none'}")
        line(f"chat template: {'yes' if report.has_chat_template else 'no'}")

    output.result(report, render)
    return 0


COMMAND = Command(
    name="inspect",
    summary="show what a GGUF file holds",
    description="Architecture, key metadata, tensor count, bytes per tensor type, bits per weight and end-of-generation tokens.",
    add_arguments=add_arguments,
    run=run,
)
