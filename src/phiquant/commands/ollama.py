"""`phiquant ollama`: a Modelfile so `ollama create` runs a GGUF with the right prompt format and stops."""

from __future__ import annotations

import argparse
from typing import Any

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.commands.runtime_flags import read_chat_template
from phiquant.runtime.memory import CONTEXT_PADDING


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL.gguf", help="GGUF file (a chat model: it needs a chat template)"
    )
    parser.add_argument(
        "-o", "--output", metavar="Modelfile", help="write the Modelfile here (default: print it to stdout)"
    )
    parser.add_argument(
        "--ctx",
        type=int,
        metavar="N",
        help="PARAMETER num_ctx (default: the context phiquant chat uses: a LongRoPE model's original "
        f"context, else its training context; llama.cpp pads to multiples of {CONTEXT_PADDING})",
    )
    parser.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template (a file, or the template text itself) replacing the GGUF's own",
    )


def run(args: argparse.Namespace, output: Output) -> int:
    template = read_chat_template(args.chat_template)
    modelfile = api.ollama_modelfile(args.model, args.output, num_ctx=args.ctx, chat_template=template)
    if modelfile.merge_command:
        output.reporter().warn(
            f"Ollama takes one GGUF file: merge the shards first: {modelfile.merge_command}"
        )

    def render(console: Any) -> None:
        if modelfile.path is None:
            print(modelfile.text, end="")  # the Modelfile itself, byte for byte: no rich rendering
            return
        console.print(
            f"wrote {modelfile.path} ({len(modelfile.stops)} stop tokens, num_ctx {modelfile.num_ctx}); "
            f"next: ollama create NAME -f {modelfile.path}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    output.result(modelfile, render)
    return 0


COMMAND = Command(
    name="ollama",
    summary="write an Ollama Modelfile for a GGUF",
    description=(
        "Write an Ollama Modelfile for a GGUF file: the chat template translated to Ollama's Go TEMPLATE "
        "(checked to render conversations exactly as the GGUF's Jinja template), a PARAMETER stop line "
        "for every end-of-generation token, and num_ctx, so `ollama create` gives a Phi that stops "
        "where it should."
    ),
    add_arguments=add_arguments,
    run=run,
)
