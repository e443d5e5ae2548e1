"""`phiquant quantize`: a checkpoint (or F32/F16/BF16 GGUF) to one or more llama.cpp types in one pass."""

from __future__ import annotations

import argparse
import json
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.eval import add_evaluation_arguments, evaluation_options, render_report
from phiquant.commands.flags import add_flags, flag_values
from phiquant.commands.output import Output, terminal_text
from phiquant.commands.report import add_report_arguments
from phiquant.gguf_io import format_bytes
from phiquant.quant.budget_plan import BudgetSummary
from phiquant.workflows.quantize_request import FLAG_PARTS, QuantizeRequest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, FLAG_PARTS)
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
    request = QuantizeRequest.from_options(**flag_values(args, FLAG_PARTS))
    eval_options = evaluation_options(args, prefix="eval-")  # a bad value refused before quantizing
    result = api.run_quantize(request, reporter=output.reporter())
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
