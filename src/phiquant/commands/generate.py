"""`phiquant generate`: complete one prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phiquant import api
from phiquant.commands.command import Command
from phiquant.commands.output import Output
from phiquant.commands.runtime_flags import (
    add_model_arguments,
    add_sampling_arguments,
    runner_options,
    sampling_options,
)
from phiquant.errors import EXIT_INTERRUPTED, PhiquantError

if TYPE_CHECKING:
    from phiquant.runtime.generate import Completion
    from phiquant.runtime.runner import ModelRunner


@dataclass
class GenerateResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seed: int
    prompt_seconds: float
    generation_seconds: float
    tokens_per_second: float
    context: int
    gpu_layers: int
    placement: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-p", "--prompt", help="the prompt, used as it is: special tokens such as <|user|> are recognised"
    )
    source.add_argument("-f", "--prompt-file", metavar="FILE", help="read the prompt from a file")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="treat the prompt as a user message and build the prompt with the model's chat template",
    )
    parser.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    parser.add_argument(
        "--image",
        action="append",
        metavar="FILE",
        help="an image (PNG, JPEG or WebP) for a vision model; repeat for several. With --chat they go "
        "before the text of the user message; without it the prompt places each at an image marker",
    )
    add_sampling_arguments(
        parser, max_tokens_help="stop after N tokens (default: when the model ends or the context is full)"
    )


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return str(args.prompt)
    path = Path(args.prompt_file)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PhiquantError(f"cannot read the prompt: {error}", path=path) from None


def prompt_tokens(runner: ModelRunner, args: argparse.Namespace, text: str) -> list[int]:
    if args.system is not None and not args.chat:
        raise PhiquantError("--system needs --chat (without it the prompt is used as it is)")
    if not args.chat:
        return runner.text_tokens(text)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return runner.chat_tokens(messages + [{"role": "user", "content": text}])


def image_prompt(runner: ModelRunner, args: argparse.Namespace, text: str, n_images: int) -> str:
    """The prompt text with one image marker per image: in the user message (--chat), or where the
    prompt itself puts them."""
    marker = runner.vision().marker
    if args.system is not None and not args.chat:
        raise PhiquantError("--system needs --chat (without it the prompt is used as it is)")
    if not args.chat:
        if marker not in text:
            raise PhiquantError(
                f"the prompt has no image marker {marker!r}: put one where each image goes, or use --chat"
            )
        return text
    content = text if marker in text else f"{marker}\n" * n_images + text
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return runner.prompt.render(messages + [{"role": "user", "content": content}])


def run(args: argparse.Namespace, output: Output) -> int:
    from phiquant.runtime.generate import Completion
    from phiquant.runtime.images import read_image_file

    text = read_prompt(args)
    sampling = sampling_options(args)
    images = [read_image_file(path) for path in args.image or []]  # checked before the model loads
    reporter = output.reporter()
    with api.load(args.model, runner_options(args), reporter=reporter) as runner:
        completion = Completion()
        if images:
            pieces = runner.stream_with_images(
                image_prompt(runner, args, text, len(images)), images, sampling, completion=completion
            )
        else:
            pieces = api.generate_tokens(
                runner, prompt_tokens(runner, args, text), sampling, completion=completion
            )
        stream = None if output.json else sys.stdout
        try:
            for piece in pieces:
                if stream is not None:
                    stream.write(piece)
                    stream.flush()
        except KeyboardInterrupt:
            print("\nphiquant: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if stream is not None and not completion.text.endswith("\n"):
            stream.write("\n")
        result = _result(runner, completion)
    if output.json:
        output.result(result, lambda console: None)
    elif not output.quiet:
        print(_summary(result), file=sys.stderr)
    return 0


def _result(runner: ModelRunner, completion: Completion) -> GenerateResult:
    return GenerateResult(
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        seed=completion.seed,
        prompt_seconds=round(completion.prompt_seconds, 4),
        generation_seconds=round(completion.generation_seconds, 4),
        tokens_per_second=round(completion.tokens_per_second, 2),
        context=runner.n_ctx,
        gpu_layers=runner.placement.gpu_layers,
        placement=runner.placement.describe(),
    )


def _summary(result: GenerateResult) -> str:
    return (
        f"[{result.finish_reason}] {result.prompt_tokens} prompt tokens, {result.completion_tokens} generated "
        f"at {result.tokens_per_second:.1f} tokens/s; seed {result.seed}; context {result.context}; "
        f"{result.placement}"
    )


COMMAND = Command(
    name="generate",
    summary="complete a prompt with a GGUF model (or a Hugging Face directory)",
    description=(
        "Complete one prompt, streaming the text as it comes. Generation stops on every end-of-generation "
        "token of the model (Phi-3's <|end|>, <|endoftext|>...), which never appear in the output. The "
        "prompt is used as it is (special tokens recognised); --chat wraps it in the model's chat template. "
        "The same seed, prompt and options give the same text here, in `phiquant chat` and in "
        "`phiquant serve`."
    ),
    add_arguments=add_arguments,
    run=run,
)
