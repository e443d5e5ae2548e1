"""`phiquant quantize`: a checkpoint (or F32/F16/BF16 GGUF) to one or more llama.cpp types in one pass."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.eval import add_evaluation_arguments, evaluation_options, render_report
from phiquant.commands.output import Output, terminal_text
from phiquant.commands.report import add_report_arguments
from phiquant.commands.source_flags import add_checkpoint_reading_arguments, add_split_arguments
from phiquant.errors import PhiquantError
from phiquant.gguf_io import format_bytes
from phiquant.quant.budget import parse_size
from phiquant.quant.budget_plan import BudgetSummary
from phiquant.quant.types import parse_ggml_type


def tensor_type_override(text: str) -> tuple[str, str]:
    """REGEX=TYPE, split at the last '=' so patterns may contain '='."""
    pattern, separator, type_name = text.rpartition("=")
    if not separator or not pattern or not type_name:
        raise PhiquantError(f"--tensor-type wants REGEX=TYPE, got {text!r}")
    try:
        re.compile(pattern)
    except re.error as error:
        raise PhiquantError(
            f"--tensor-type pattern {pattern!r} is not a valid regular expression: {error}"
        ) from None
    parse_ggml_type(type_name)  # unknown types fail here with the list of valid ones
    return pattern, type_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SRC",
        help="Hugging Face model directory, a model id (org/name[@revision]) in the local Hugging Face cache, "
        "or an F32/F16/BF16 GGUF",
    )
    parser.add_argument(
        "-t",
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="llama.cpp file type (Q4_K_M, Q8_0, IQ4_XS, ...); repeat for a ladder written in one pass "
        "(not with --max-size/--target-bpw)",
    )
    parser.add_argument(
        "-o", "--output-dir", default=".", metavar="DIR", help="where to write (default: here)"
    )
    parser.add_argument(
        "--imatrix",
        metavar="FILE|auto",
        help="importance matrix (llama.cpp GGUF or legacy .dat); 'auto' computes one over the bundled "
        "calibration text (cached) when a chosen type uses it",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-size",
        metavar="SIZE",
        help="one file no larger than SIZE (e.g. 2.1G, 850M, 512MiB), each tensor's type chosen to minimise "
        "the predicted KL divergence; --dry-run prints the plan",
    )
    budget.add_argument(
        "--target-bpw",
        type=float,
        metavar="BITS",
        help="as --max-size, with the budget in bits per weight over all tensors (as llama.cpp reports it)",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="quantization threads (default: all cores)")
    parser.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="REGEX=TYPE",
        help="force a type on tensors whose name matches REGEX (searched, not anchored); the first "
        "matching pattern wins and takes precedence over the preset's rules, but not over "
        "--output-type/--embedding-type; repeatable",
    )
    parser.add_argument("--output-type", metavar="TYPE", help="type for output.weight")
    parser.add_argument("--embedding-type", metavar="TYPE", help="type for token_embd.weight")
    parser.add_argument(
        "--pure", action="store_true", help="the preset's default type everywhere, no mix rules"
    )
    parser.add_argument(
        "--allow-fallback",
        action="store_true",
        help="where a type cannot apply (rows not a multiple of its block), use llama.cpp's substitute "
        "and report it, instead of stopping",
    )
    parser.add_argument(
        "--allow-requantize", action="store_true", help="accept an already quantized GGUF source"
    )
    add_checkpoint_reading_arguments(parser)
    add_split_arguments(parser)
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="write F32/F16/BF16 weights holding NaN/Inf"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the per-tensor plan and sizes; write nothing"
    )
    evaluation = parser.add_argument_group(
        "evaluation (--eval)", "measure the written files against an unquantized copy of the source"
    )
    evaluation.add_argument(
        "--eval",
        action="store_true",
        help="after writing, evaluate every file (as `phiquant report`) and write the report beside them",
    )
    add_evaluation_arguments(evaluation, prefix="eval-")
    add_report_arguments(evaluation)


def run(args: argparse.Namespace, output: Output) -> int:
    overrides = [tensor_type_override(text) for text in args.tensor_type]
    eval_options = evaluation_options(args, prefix="eval-")  # a bad value refused before quantizing
    result = api.quantize(
        args.source,
        args.types,
        args.output_dir,
        imatrix=args.imatrix,
        tensor_types=overrides,
        output_type=args.output_type,
        embedding_type=args.embedding_type,
        pure=args.pure,
        allow_fallback=args.allow_fallback,
        allow_requantize=args.allow_requantize,
        allow_nonfinite=args.allow_nonfinite,
        allow_pickle=args.allow_pickle,
        text_only=args.text_only,
        mmproj_type=args.mmproj_type,
        threads=args.threads,
        dry_run=args.dry_run,
        max_size=parse_size(args.max_size) if args.max_size is not None else None,
        target_bpw=args.target_bpw,
        split_max_size=args.split_max_size,
        split_max_tensors=args.split_max_tensors,
        reporter=output.reporter(),
    )
    report = None
    if args.eval and not result.dry_run:
        report = api.report_quantized(
            args.source,
            result,
            text=args.eval_text,
            options=eval_options,
            max_kld=args.max_kld,
            plot=not args.no_plot,
            reporter=output.reporter(),
        )

    def render(console: Any) -> None:
        from rich.table import Table
        from rich.text import Text

        if result.dry_run:
            for type_name, tensors in result.plans.items():
                plan_table = Table("tensor", "shape", "from", "to", "why", title=f"{type_name} plan")
                for tensor in tensors:
                    to = tensor.target_type.name + (
                        f" (not {tensor.fallback_from.name})" if tensor.fallback_from else ""
                    )
                    plan_table.add_row(  # Text: tensor names come from the source file, not rich markup
                        Text(terminal_text(tensor.name)),
                        "x".join(map(str, tensor.shape)),
                        tensor.source_type.name,
                        to,
                        Text(tensor.why),
                    )
                console.print(plan_table)
        table = Table(
            "type", "file", "size", "bits/weight", "seconds", title="predicted" if result.dry_run else None
        )
        for file in result.files:
            seconds = "-" if result.dry_run else f"{file.seconds:.1f}"
            table.add_row(
                file.type,
                Text(terminal_text(file.path)),
                format_bytes(file.file_size),
                f"{file.bits_per_weight:.3f}",
                seconds,
            )
        console.print(table)
        if result.mmproj is not None:
            console.print(f"vision projector: {result.mmproj}", markup=False, highlight=False, soft_wrap=True)
        for note in result.notes:
            console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        if result.budget is not None:
            budget = result.budget
            console.print(_budget_line(budget), markup=False, highlight=False, soft_wrap=True)
        if report is not None:
            render_report(console, report)

    if output.json and report is not None:
        from phiquant.commands.output import to_jsonable
        from phiquant.evaluate.report import to_json

        print(json.dumps({"quantize": to_jsonable(result), "report": to_json(report)}, indent=2))
        return 0
    output.result(result, render)
    return 0


def _budget_line(budget: BudgetSummary) -> str:
    kld = f"predicted mean KLD {budget.predicted_kld:.5f} nats"
    if budget.fit_warning:
        kld += " (implausible: see the warning)"
    plan = "free allocation" if budget.anchor == "free" else f"anchored to {budget.anchor}"
    return (
        f"budget ({budget.request}): {kld}, {format_bytes(budget.predicted_size)} "
        f"(smallest possible {format_bytes(budget.minimum_size)}); labelled {budget.label}, weights "
        + ", ".join(f"{name} {share:.0%}" for name, share in budget.mix.items())
        + f"; plan: {plan}; sensitivities "
        + ", ".join(f"{k} {v:.3g}" for k, v in budget.sensitivities.items())
        + "; layer factors "
        + " ".join(f"{v:.2g}" for v in budget.layer_factors.values())
    )


COMMAND = Command(
    name="quantize",
    summary="quantize to one or more llama.cpp types in one pass",
    description=(
        "Quantize a Hugging Face Phi checkpoint, or an F32/F16/BF16 GGUF, to llama.cpp types with "
        "llama.cpp's own per-tensor rules and ggml's kernels: the files are the ones llama-quantize "
        "would write, without an F16 intermediate. Several -t write a ladder from one read of the source."
    ),
    add_arguments=add_arguments,
    run=run,
)
