"""`phiquant report`: every file of a model measured, tabled, plotted, and the one to pick."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.eval import add_evaluation_arguments, evaluation_options, positive_float, render_report
from phiquant.commands.output import Output
from phiquant.evaluate.options import DEFAULT_MAX_KLD
from phiquant.evaluate.report import to_json


def add_report_arguments(parser: Any) -> None:
    parser.add_argument(
        "--max-kld",
        type=positive_float,
        default=DEFAULT_MAX_KLD,
        metavar="NATS",
        help=f"recommend the smallest file whose mean KL divergence is at most this (default {DEFAULT_MAX_KLD}: "
        "between Q4_K_M and Q4_0 on Llama-3-8B in llama.cpp's published table)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNG (no matplotlib needed)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="MODEL.gguf|DIR", help="GGUF files of one model, or directories of them"
    )
    add_evaluation_arguments(parser)
    add_report_arguments(parser)
    parser.add_argument(
        "-o", "--output-dir", metavar="DIR", help="where to write the report (default: beside the files)"
    )


def run(args: argparse.Namespace, output: Output) -> int:
    report = api.report(
        args.inputs,
        reference=args.ref,
        text=args.text,
        options=evaluation_options(args),
        max_kld=args.max_kld,
        output_dir=args.output_dir,
        plot=not args.no_plot,
        reporter=output.reporter(),
    )
    if output.json:
        import json

        print(json.dumps(to_json(report), indent=2))
    elif not output.quiet:
        from rich.console import Console

        render_report(Console(), report)
    return 0


COMMAND = Command(
    name="report",
    summary="report every file of a model: table, JSON, plot, recommendation",
    description=(
        "Evaluate every GGUF file of a model (as `phiquant eval`) and write <model>-report.md, .json and "
        ".png (file size against mean KL divergence, Pareto front marked), recommending the smallest file "
        "whose mean KL divergence stays under --max-kld.  Sequential by default (see `phiquant eval`): the "
        "report states each figure's 95% interval and the tokens used, and the plot draws error bars."
    ),
    add_arguments=add_arguments,
    run=run,
)
