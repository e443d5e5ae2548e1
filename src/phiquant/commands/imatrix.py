"""`phiquant imatrix`: the importance matrix of a model over calibration text, in llama.cpp's format."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output, terminal_text
from phiquant.errors import PhiquantError


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PhiquantError(f"expected a whole number, got {text!r}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="GGUF file or Hugging Face model directory")
    parser.add_argument(
        "--text",
        metavar="FILE",
        help="calibration text (UTF-8); default: phiquant's bundled calibration text (Python "
        "documentation prose, code and chat turns; never the evaluation text)",
    )
    parser.add_argument(
        "--ctx", type=whole_number, default=512, metavar="N", help="tokens per chunk (default 512)"
    )
    parser.add_argument(
        "--chunks", type=whole_number, metavar="N", help="use at most N chunks (default: the whole text)"
    )
    parser.add_argument("-o", "--output", default="imatrix.gguf", metavar="FILE", help="default imatrix.gguf")
    parser.add_argument("--threads", type=int, metavar="N", help="evaluation threads (default: llama.cpp's)")


def run(args: argparse.Namespace, output: Output) -> int:
    result = api.imatrix(
        args.model,
        args.output,
        text=args.text,
        ctx=args.ctx,
        chunks=args.chunks,
        threads=args.threads,
        reporter=output.reporter(),
    )

    def render(console: Any) -> None:
        def line(text: str) -> None:
            console.print(terminal_text(text), markup=False, highlight=False, soft_wrap=True)

        line(
            f"{result.path}: {result.entries} weight matrices, {result.chunks} chunks of {result.chunk_size} "
            f"tokens ({result.text_tokens} in the text) from {result.dataset}, {result.seconds:.1f} s"
        )
        for name, experts in result.unrouted_experts.items():
            line(f"never routed: {name} experts {experts} (quantize uses uniform importance for them)")

    output.result(result, render)
    return 0


COMMAND = Command(
    name="imatrix",
    summary="compute an importance matrix (llama.cpp format) over calibration text",
    description=(
        "Evaluate MODEL with llama.cpp over calibration text and record, for every weight matrix, the mean "
        "squared activation of each input column (per expert for Phi-3.5-MoE), in llama.cpp's GGUF imatrix "
        "format: phiquant quantize --imatrix and llama-quantize --imatrix both read it."
    ),
    add_arguments=add_arguments,
    run=run,
)
