"""phiquant's Python API.  The CLI is a thin layer over these functions; notebooks call them directly.

A facade: the functions are the workflows' (phiquant.workflows) and the runtime's, gathered in one
place.  `quantize` also takes a request object (`QuantizeRequest`: SourceOptions, Presets or a size
budget, RunOptions) through `run_quantize`, or `plan_quantize` to see the plan without writing.  Every
function returns plain dataclasses and reports progress through a `Reporter` (silent unless you pass
one); none prints.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from phiquant.errors import PhiquantError
from phiquant.evaluate.evaluation import evaluate
from phiquant.hub import resolve_source
from phiquant.inspection import GGUFReport, inspect_gguf
from phiquant.model_source import ModelSource
from phiquant.progress import SILENT, Reporter
from phiquant.workflows.as_gguf import as_gguf
from phiquant.workflows.convert import CONVERT_OUTTYPES, ConvertResult, convert
from phiquant.workflows.imatrix import ImatrixResult, imatrix
from phiquant.workflows.job import open_source
from phiquant.workflows.merge import MergeResult, merge
from phiquant.workflows.quantize import (
    QuantizedFile,
    QuantizePlan,
    QuantizeResult,
    plan_quantize,
    quantize,
    report_quantized,
    run_quantize,
)
from phiquant.workflows.quantize_request import (
    MaxSize,
    Overrides,
    Presets,
    QuantizeRequest,
    RunOptions,
    SourceOptions,
    TargetBpw,
)
from phiquant.workflows.report import gguf_files_in
from phiquant.workflows.report import report_files as report

if TYPE_CHECKING:  # the runtime loads llama.cpp: imported only by the functions that run models
    from phiquant.integrations.card import ModelCard
    from phiquant.integrations.ollama import Modelfile
    from phiquant.runtime.generate import Completion, SamplingOptions
    from phiquant.runtime.runner import ModelRunner, RunnerOptions
    from phiquant.workflows.batch import BatchSummary

__all__ = [
    "CONVERT_OUTTYPES",
    "ConvertResult",
    "ImatrixResult",
    "MaxSize",
    "MergeResult",
    "Overrides",
    "Presets",
    "QuantizePlan",
    "QuantizeRequest",
    "QuantizeResult",
    "QuantizedFile",
    "RunOptions",
    "SourceOptions",
    "TargetBpw",
    "batch",
    "chat_completion",
    "convert",
    "evaluate",
    "generate_tokens",
    "gguf_files_in",
    "imatrix",
    "inspect",
    "load",
    "load_hf_model",
    "merge",
    "model_card",
    "ollama_modelfile",
    "plan_quantize",
    "quantize",
    "report",
    "report_quantized",
    "run_quantize",
]


def load_hf_model(source: str | Path) -> ModelSource:
    """Index a Hugging Face checkpoint directory as a GGUF model ready to write (reads no weights)."""
    path = resolve_source(source)
    if not path.is_dir():
        raise PhiquantError("not a Hugging Face model directory (expected a folder)", path=path)
    return open_source(path).model


def inspect(path: str | Path) -> GGUFReport:
    """Describe a GGUF file: architecture, key metadata, tensors by type, bits per weight, EOG tokens."""
    return inspect_gguf(Path(path))


def load(
    model: str | Path, options: RunnerOptions | None = None, *, reporter: Reporter = SILENT
) -> ModelRunner:
    """Open a GGUF file, a Hugging Face directory or a model id in the local Hugging Face cache (both
    converted once into phiquant's cache) for generation: context size checked against memory,
    layers placed on the GPU as `options` says.  The runner generates (`generate`, `stream`), answers
    chats (`chat`, `chat_session`); close it (or use `with`) to free the model."""
    from phiquant.runtime.runner import RunnerOptions, open_runner

    with as_gguf(model, cache=True, reporter=reporter) as file:  # the cached conversion outlives this
        return open_runner(file, options or RunnerOptions(), reporter=reporter)


def generate_tokens(
    runner: ModelRunner,
    prompt_tokens: Sequence[int],
    sampling: SamplingOptions | None = None,
    *,
    completion: Completion | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Stream the text that follows `prompt_tokens` in a fresh context (`runner.stream`); stops on the
    model's end-of-generation tokens, the stop strings, max_tokens or a full context."""
    return runner.stream(prompt_tokens, sampling, completion=completion, cancel=cancel)


def chat_completion(
    runner: ModelRunner, messages: Sequence[Mapping[str, str]], sampling: SamplingOptions | None = None
) -> Completion:
    """Answer a conversation (OpenAI-style messages) with the model's own chat template (`runner.chat`)."""
    return runner.chat(messages, sampling)


def ollama_modelfile(
    model: str | Path,
    output: str | Path | None = None,
    *,
    num_ctx: int | None = None,
    chat_template: str | None = None,
) -> Modelfile:
    """An Ollama Modelfile for a GGUF file: FROM, the chat template as Ollama's Go TEMPLATE (checked to
    render whole chats exactly as the GGUF's Jinja template does), `PARAMETER stop` for every
    end-of-generation token and `num_ctx` (LongRoPE models: their original context).  Written to
    `output` when given; the text is in the result either way."""
    from phiquant.integrations.ollama import build_modelfile, write_modelfile

    built = build_modelfile(model, output, num_ctx=num_ctx, chat_template=chat_template)
    return write_modelfile(built, output) if output is not None else built


def model_card(
    directory: str | Path,
    output: str | Path | None = None,
    *,
    base_model: str | None = None,
    license: str | None = None,
    quantized_by: str = "phiquant",
    tags: Sequence[str] = (),
    write: bool = True,
) -> ModelCard:
    """A Hugging Face model card for a folder of GGUF files: front matter (base_model, license,
    quantized_by, tags), the file table, the quality table and plot of the folder's report (from
    `report` or `quantize --eval`), the commands that make the files and the versions that made them.
    Written to `output` (default: DIRECTORY/README.md) unless `write` is false."""
    from phiquant.integrations.card import build_card, write_card

    card = build_card(directory, base_model=base_model, license=license, quantized_by=quantized_by, tags=tags)
    return write_card(card, output) if write else card


def batch(
    jobs: str | Path,
    *,
    address: str | None = None,
    cpus_per_task: int = 1,
    retries: int = 3,
    reporter: Reporter = SILENT,
) -> BatchSummary:
    """Run a jobs file (workflows.batch_jobs: models x ladders, evaluation, report and card per model) on
    Ray: an embedded local Ray by default, the cluster at `address` otherwise (`auto` finds the local
    one).  A model's ladder is one task, each file's evaluation another (the reference logits computed
    once per model and shared through phiquant's cache); a rerun skips what is done and verified; a
    failed model is reported with its reason without stopping the others.  The jobs file's output may be
    an object store URL (workflows.batch_store, `phiquant[storage]`).  Needs `phiquant[cluster]`."""
    from phiquant.workflows.batch import run_batch  # Ray is an optional extra, imported only here
    from phiquant.workflows.batch_jobs import read_jobs

    if cpus_per_task < 1:
        raise PhiquantError(f"--cpus-per-task must be at least 1, not {cpus_per_task}")
    return run_batch(
        read_jobs(jobs), address=address, cpus_per_task=cpus_per_task, retries=retries, reporter=reporter
    )
