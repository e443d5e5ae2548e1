"""`phiquant inspect`: what a GGUF file holds."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands import Command
from phiquant.gguf_io import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.gguf", help="GGUF file")


def run(args: argparse.Namespace, output: Any) -> int:
    report = api.inspect(args.file)

    def render(console: Any) -> None:
        from rich.table import Table

        console.print(f"[bold]{report.path}[/bold]  {format_bytes(report.file_size)}", highlight=False)
        console.print(
            f"architecture {report.architecture}  name {report.name!r}  file type {report.file_type}  "
            f"GGUF v{report.gguf_version}",
            highlight=False,
        )
        console.print(
            f"{report.n_tensors} tensors, {report.n_parameters:,} parameters, "
            f"{report.bits_per_weight:.3f} bits per weight",
            highlight=False,
        )
        table = Table("type", "tensors", "parameters", "bytes", "share")
        for usage in report.types:
            share = usage.nbytes / report.tensor_bytes if report.tensor_bytes else 0.0
            table.add_row(
                usage.type,
                str(usage.n_tensors),
                f"{usage.n_elements:,}",
                format_bytes(usage.nbytes),
                f"{share:.1%}",
            )
        console.print(table)
        params = "  ".join(f"{k}={v}" for k, v in report.hyperparameters.items())
        console.print(f"hyper-parameters: {params}", highlight=False)
        tok = report.tokenizer
        console.print(
            f"tokenizer: {tok['model']} ({tok['pre']}), {tok['n_tokens']} tokens, add_bos={tok['add_bos_token']}",
            highlight=False,
        )
        ends = ", ".join(f"{e.id} {e.text!r} ({'/'.join(e.roles)})" for e in report.end_of_generation)
        console.print(f"end of generation: {ends or 'none'}", highlight=False, markup=False)
        console.print(f"chat template: {'yes' if report.has_chat_template else 'no'}", highlight=False)

    output.result(report, render)
    return 0


COMMAND = Command(
    name="inspect",
    summary="show what a GGUF file holds",
    description="Architecture, key metadata, tensor count, bytes per tensor type, bits per weight and end-of-generation tokens.",
    add_arguments=add_arguments,
    run=run,
)
