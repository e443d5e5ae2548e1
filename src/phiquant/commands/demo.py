"""`phiquant demo`: convert, quantize, measure, recommend and chat, all on the bundled model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from phiquant.commands.command import Command
from phiquant.commands.eval import non_negative_int, positive_float, positive_int, render_report
from phiquant.commands.output import Output
from phiquant.evaluate.options import DEFAULT_MAX_KLD
from phiquant.evaluate.report import plain, to_json
from phiquant.workflows.demo import (
    DEMO_CHUNKS,
    DEMO_LADDER,
    DEMO_MAX_TOKENS,
    DEMO_OUTPUT_DIR,
    DEMO_PROMPT,
    DemoResult,
    run_demo,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output-dir",
        default=str(DEMO_OUTPUT_DIR),
        metavar="DIR",
        help=f"where the files and the report go (default ./{DEMO_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--chunks",
        type=positive_int,
        default=DEMO_CHUNKS,
        metavar="N",
        help=f"windows of the held-out text to evaluate (default {DEMO_CHUNKS})",
    )
    parser.add_argument("--prompt", default=DEMO_PROMPT, help="the chat prompt to answer")
    parser.add_argument("--max-tokens", type=positive_int, default=DEMO_MAX_TOKENS, metavar="N")
    parser.add_argument("--max-kld", type=positive_float, default=DEFAULT_MAX_KLD, metavar="NATS")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="threads for llama.cpp")
    parser.add_argument("--speed-runs", type=non_negative_int, default=3, metavar="N")


def render(console: Any, result: DemoResult) -> None:
    render_report(console, result.report)
    console.print(f"\nprompt: {result.prompt}", highlight=False, markup=False)
    for answer in result.answers:
        console.print(f"\n[{answer.type}] {answer.file.name}:", highlight=False, markup=False)
        console.print(answer.text, highlight=False, markup=False, soft_wrap=True)
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.step_seconds.items())
    console.print(f"\ndone in {result.seconds:.0f} s ({steps})", highlight=False, markup=False)


def run(args: argparse.Namespace, output: Output) -> int:
    result = run_demo(
        Path(args.output_dir),
        ladder=DEMO_LADDER,
        chunks=args.chunks,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        max_kld=args.max_kld,
        threads=args.threads,
        speed_runs=args.speed_runs,
        reporter=output.reporter(),
    )
    if output.json:
        document = plain(result)
        document["report"] = to_json(result.report)
        print(json.dumps(document, indent=2))
    elif not output.quiet:
        from rich.console import Console

        render(Console(), result)
    return 0


COMMAND = Command(
    name="demo",
    summary="the whole tool on the bundled model: quantize, measure, recommend, chat",
    description=(
        f"Quantize the bundled model to F16 and {', '.join(DEMO_LADDER)} in one pass, evaluate every file "
        "against the F16 file on the held-out text, print the table, write the report and plot, and "
        "answer a chat prompt with the F16 file and the recommended one."
    ),
    add_arguments=add_arguments,
    run=run,
)
