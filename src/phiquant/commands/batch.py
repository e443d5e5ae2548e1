"""`phiquant batch`: a matrix of models x quantization ladders, with evaluation, report and card, on Ray."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.errors import EXIT_OK, EXIT_SOME_FAILED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "jobs",
        metavar="JOBS.toml",
        help="the models, their ladders and the output (a folder or an fsspec URL)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="an existing Ray cluster (host:port, or auto); default: a local Ray started for this run",
    )
    parser.add_argument(
        "--cpus-per-task", type=int, default=1, metavar="N", help="cores each task takes (default: 1)"
    )
    parser.add_argument(
        "--retries", type=int, default=3, metavar="N", help="times Ray reruns a task whose worker died"
    )


def run(args: argparse.Namespace, output: Output) -> int:
    summary = api.batch(
        args.jobs,
        address=args.address,
        cpus_per_task=args.cpus_per_task,
        retries=args.retries,
        reporter=output.reporter(),
    )

    def render(console: Any) -> None:
        for model in summary.models:
            detail = model.reason if model.status == "failed" else f"{len(model.files)} files"
            console.print(
                f"{model.status:8} {model.name}: {detail}", markup=False, highlight=False, soft_wrap=True
            )
        console.print(f"{summary.output} in {summary.seconds:.1f} s on Ray ({summary.address})", markup=False)

    output.result(summary, render)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


COMMAND = Command(
    name="batch",
    summary="quantize, evaluate and card a matrix of models on Ray",
    description=(
        "Run a jobs file (TOML: [[models]] with source and types, [defaults], [eval], output) on Ray: each "
        "model's ladder is one task, each file's evaluation another, with the reference logits shared; "
        "a rerun skips verified outputs; a failed model is reported without stopping the others. "
        "Needs pip install 'phiquant[cluster]'."
    ),
    add_arguments=add_arguments,
    run=run,
)
