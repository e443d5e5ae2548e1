"""The flags `generate`, `chat` and `serve` share: which model, how it runs, how it samples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from phiquant.errors import PhiquantError
from phiquant.runtime.sampling import MAX_SEED, SamplingOptions

if TYPE_CHECKING:  # the runner loads llama.cpp; `phiquant --help` should not
    from phiquant.runtime.runner import RunnerOptions

AUTO = "auto"

DEFAULTS = SamplingOptions()
CONTEXT_HELP = (
    "context size in tokens (default: the model's original context for LongRoPE models such as "
    "Phi-3.5-mini and Phi-3-*-128k, else its training context). Above a LongRoPE model's original "
    "context llama.cpp switches every prompt to the long-context RoPE factors, which lowers quality on "
    "short prompts, so ask for more only when prompts need it. phiquant refuses a context whose KV cache "
    "does not fit in memory and says how much it needs"
)


def add_model_arguments(parser: argparse.ArgumentParser, *, context_help: str = CONTEXT_HELP) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a GGUF file, a Hugging Face model directory, or a model id (org/name) in the local Hugging Face "
        "cache (converted once, cached)",
    )
    group = parser.add_argument_group("runtime")
    group.add_argument("--ctx", type=int, metavar="N", help=context_help)
    group.add_argument(
        "--gpu-layers",
        default=AUTO,
        metavar="N|auto",
        help="layers to offload to the GPU; auto (default) offloads as many as fit in free GPU memory "
        "with their KV cache, and 0 where llama.cpp has no GPU",
    )
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all available)")
    group.add_argument(
        "--chat-template",
        metavar="FILE|JINJA",
        help="a Jinja chat template (a file, or the template text itself) replacing the model's own",
    )
    group.add_argument(
        "--mmproj",
        metavar="FILE",
        help="vision projector for --image / image_url input (default: the *mmproj*.gguf beside the model)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, *, max_tokens_help: str) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--temp",
        type=float,
        default=DEFAULTS.temperature,
        metavar="T",
        help="temperature; 0 is greedy (default %(default)s)",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=DEFAULTS.top_p,
        metavar="P",
        help="nucleus sampling (default %(default)s)",
    )
    group.add_argument(
        "--top-k",
        type=int,
        default=DEFAULTS.top_k,
        metavar="K",
        help="top-k sampling, 0 is off (default %(default)s)",
    )
    group.add_argument(
        "--seed", type=int, metavar="N", help=f"random seed, 0-{MAX_SEED} (default: random, reported)"
    )
    group.add_argument("--max-tokens", type=int, metavar="N", help=max_tokens_help)
    group.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)"
    )


def runner_options(args: argparse.Namespace, *, n_contexts: int = 1) -> RunnerOptions:
    from phiquant.runtime.runner import RunnerOptions, parse_gpu_layers

    if args.threads is not None and args.threads < 1:
        raise PhiquantError(f"--threads must be at least 1, not {args.threads}")
    return RunnerOptions(
        n_ctx=args.ctx,
        gpu_layers=parse_gpu_layers(str(args.gpu_layers)),
        threads=args.threads,
        chat_template=read_chat_template(args.chat_template),
        chat_template_origin=chat_template_origin(args.chat_template),
        n_contexts=n_contexts,
        mmproj=Path(args.mmproj) if getattr(args, "mmproj", None) else None,
    )


def is_jinja_text(value: str) -> bool:
    return "{{" in value or "{%" in value


def chat_template_origin(value: str | None) -> str:
    """What a template error names: the file the template was read from, so the user knows which."""
    if value is None or is_jinja_text(value):
        return "--chat-template"
    return f"--chat-template {value}"


def read_chat_template(value: str | None) -> str | None:
    """Template text when it looks like Jinja ({{ or {%), else the contents of the named file."""
    if value is None or is_jinja_text(value):
        return value
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PhiquantError("--chat-template: no such file (and not Jinja text either)", path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PhiquantError(f"--chat-template: cannot read the file: {error}", path=path) from None


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    options = SamplingOptions(
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens if args.max_tokens is not None else 2**31 - 1,
        stop=tuple(args.stop),
    )
    options.validate()
    return options
