"""`phiquant eval`: what each file lost — perplexity, KL divergence from the reference, speed, size."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.errors import PhiquantError
from phiquant.evaluate.evaluation import Evaluation
from phiquant.evaluate.options import DEFAULT_CONTEXT, DEFAULT_REL_ERROR, DEFAULT_SEED, EvalOptions
from phiquant.evaluate.report import COLUMNS, Report, ReportRow, table_row


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def a_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def add_evaluation_arguments(parser: Any, *, prefix: str = "") -> None:
    """The options every evaluating command shares (`prefix` "eval-" for quantize --eval)."""
    parser.add_argument(
        f"--{prefix}text",
        metavar="FILE",
        help="UTF-8 text to measure on (default: phiquant's held-out Python documentation text)",
    )
    parser.add_argument(
        f"--{prefix}ctx",
        type=positive_int,
        default=DEFAULT_CONTEXT,
        metavar="N",
        help=f"window size in tokens; the second half of each window is scored (default {DEFAULT_CONTEXT})",
    )
    parser.add_argument(
        f"--{prefix}chunks",
        type=positive_int,
        metavar="N",
        help="evaluate only the first N windows (default: the whole text)",
    )
    parser.add_argument(
        f"--{prefix}rel-error",
        type=a_number,
        default=DEFAULT_REL_ERROR,
        metavar="R",
        help="measure windows in a random order until each file's mean KL divergence has at most this "
        "relative standard error and the files' order is settled at 95%% confidence "
        f"(default {DEFAULT_REL_ERROR})",
    )
    parser.add_argument(
        f"--{prefix}full",
        action="store_true",
        help="measure every window in text order instead (llama.cpp's perplexity tool's figures)",
    )
    parser.add_argument(
        f"--{prefix}seed",
        type=whole_number,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the order windows are measured in (default {DEFAULT_SEED})",
    )
    if not prefix:
        parser.add_argument(
            "--ref", metavar="REF.gguf", help="reference file (default: the F32/BF16/F16 file of the model)"
        )
        parser.add_argument("--threads", type=positive_int, metavar="N", help="llama.cpp threads")
    parser.add_argument(
        f"--{prefix}speed-runs",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="timed runs for prompt and generation speed, median reported; 0 skips (default 3)",
    )


def evaluation_options(args: argparse.Namespace, *, prefix: str = "") -> EvalOptions:
    """The evaluation options given, checked (before any work, so quantize --eval refuses a bad value
    before quantizing)."""
    key = prefix.replace("-", "_")
    rel_error = getattr(args, f"{key}rel_error")
    if not rel_error > 0:
        raise PhiquantError(f"--{prefix}rel-error must be above 0, not {rel_error:g}")
    return EvalOptions(
        ctx=getattr(args, f"{key}ctx"),
        max_windows=getattr(args, f"{key}chunks"),
        threads=getattr(args, "threads", None),
        speed_runs=getattr(args, f"{key}speed_runs"),
        full=getattr(args, f"{key}full"),
        rel_error=rel_error,
        seed=getattr(args, f"{key}seed"),
    )


TERMINAL_COLUMNS = (
    "type",
    "size",
    "bpw",
    "PPL",
    "PPL ratio",
    "mean KLD",
    "99% KLD",
    "same top",
    "Δp top RMS",
    "pp t/s",
    "tg t/s",
    "",
)
PIPE_WIDTH = 160  # rich wraps at 80 columns when it cannot ask a terminal; the table needs more


def terminal_row(row: ReportRow) -> list[str]:
    """The columns of the Markdown table that fit a terminal (report.COLUMNS minus file, median, max, Δp mean)."""
    cells = dict(zip(COLUMNS, table_row(row)))
    cells["bpw"] = cells["bits/weight"]
    cells["PPL"] = cells["PPL"].split(" ")[0]
    return [cells[name] for name in TERMINAL_COLUMNS]


def render_rows(console: Any, evaluation: Evaluation, rows: list[ReportRow]) -> None:
    from rich.table import Table

    if not console.is_terminal:
        console.width = max(console.width, PIPE_WIDTH)
    table = Table(*TERMINAL_COLUMNS, title="what each file lost" if evaluation.reference else "perplexity")
    for row in rows:
        table.add_row(*terminal_row(row))
    console.print(table)
    text = evaluation.text
    console.print(
        f"{evaluation.n_scored_tokens} scored tokens per file from {text.path} ({evaluation.n_windows} "
        f"windows of {evaluation.ctx}); reference: "
        f"{evaluation.reference or 'none'}{' (cached)' if evaluation.reference_from_cache else ''}; "
        f"a model that learned nothing: PPL {evaluation.uniform_perplexity:.0f}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    sequential = evaluation.sequential
    if sequential is not None:
        console.print(
            f"sequential: {sequential.windows_used} of {sequential.windows_available} windows in a random "
            f"order (seed {sequential.seed}), stopped: {sequential.stopped} (target relative error "
            f"{sequential.rel_error:g}; ± is a {100 * sequential.confidence:g}% interval; --full for every window)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for note in evaluation.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def render_evaluation(console: Any, evaluation: Evaluation) -> None:
    rows = [ReportRow(f, False, False) for f in evaluation.files]
    render_rows(console, evaluation, rows)


def render_report(console: Any, report: Report) -> None:
    render_rows(console, report.evaluation, report.rows)
    console.print(f"recommendation: {report.recommendation}", highlight=False, markup=False, soft_wrap=True)
    for path in (report.markdown_path, report.json_path, report.plot_path):
        if path is not None:
            console.print(f"wrote {path}", highlight=False, markup=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="MODEL.gguf", help="GGUF files of one model")
    add_evaluation_arguments(parser)


def run(args: argparse.Namespace, output: Output) -> int:
    evaluation = api.evaluate(
        args.files,
        reference=args.ref,
        text=args.text,
        options=evaluation_options(args),
        reporter=output.reporter(),
    )
    output.result(evaluation, lambda console: render_evaluation(console, evaluation))
    return 0


COMMAND = Command(
    name="eval",
    summary="measure what quantized files lost: perplexity, KL divergence, speed, size",
    description=(
        "Perplexity over a text in windows scored on their second half (as llama.cpp's perplexity tool), "
        "KL divergence per token, top-token agreement and probability change against the reference "
        "(default: the F32/BF16/F16 file of the same model, its logits cached on disk), prompt and "
        "generation speed, file size and bits per weight.  Windows are measured in a seeded random "
        "order, every file on each window in one sweep, until each file's mean KL divergence is known to "
        "--rel-error and the files' order by it is settled at 95% confidence (intervals reported); "
        "--full measures every window in text order, as llama-perplexity does."
    ),
    add_arguments=add_arguments,
    run=run,
)
