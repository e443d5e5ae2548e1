"""phiquant's Python API.  The CLI is a thin layer over these functions; notebooks call them directly.

Every function returns plain dataclasses and reports progress through a `Reporter` (silent unless
you pass one); none prints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from phiquant import temporary_files
from phiquant.errors import PhiquantError
from phiquant.evaluate.options import DEFAULT_MAX_KLD, DEFAULT_OPTIONS, EvalOptions
from phiquant.gguf_io import Metadatum
from phiquant.gguf_io.mmproj_writer import (
    DEFAULT_MMPROJ_TYPE,
    mmproj_file_name,
    parse_mmproj_type,
    write_mmproj,
)
from phiquant.gguf_io.split import SplitLimits, parse_split_size
from phiquant.hub import resolve_source
from phiquant.inspection import GGUFReport, inspect_gguf
from phiquant.model_source import GGML_TYPE_BF16, GGML_TYPE_F16, ModelSource
from phiquant.progress import SILENT, Reporter
from phiquant.quant import budget_plan
from phiquant.quant.job import (
    PlannedFile,
    Source,
    attach_imatrix,
    default_file_name,
    open_source,
    plan_files,
    write_files,
)
from phiquant.quant.plan import QuantOptions, TensorPlan
from phiquant.quant.types import parse_preset

if TYPE_CHECKING:  # the runtime loads llama.cpp: imported only by the functions that run models
    from phiquant.evaluate.evaluation import Evaluation
    from phiquant.evaluate.report import Report
    from phiquant.integrations.card import ModelCard
    from phiquant.integrations.ollama import Modelfile
    from phiquant.runtime.generate import Completion, SamplingOptions
    from phiquant.runtime.runner import ModelRunner, RunnerOptions
    from phiquant.workflows.batch import BatchSummary

CONVERT_OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")


@dataclass
class ConvertResult:
    path: Path
    outtype: str
    file_size: int
    n_tensors: int
    seconds: float
    source_bytes: int
    warnings: list[str] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)  # a split file's shards (`path` is the first)
    mmproj: Path | None = None  # the vision projector file written beside it (multimodal checkpoints)


@dataclass
class QuantizedFile:
    type: str
    path: Path
    file_size: int
    bits_per_weight: float
    seconds: float
    fallbacks: list[str] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)  # a split file's shards (`path` is the first)


def split_limits(split_max_size: int | str | None, split_max_tensors: int | None) -> SplitLimits | None:
    """Shard limits from the --split-max-size / --split-max-tensors options (None: one file)."""
    if split_max_size is None and split_max_tensors is None:
        return None
    size = parse_split_size(split_max_size) if isinstance(split_max_size, str) else split_max_size
    return SplitLimits(size, split_max_tensors)


@dataclass
class QuantizeResult:
    source: str
    files: list[QuantizedFile]
    seconds: float
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plans: dict[str, list[TensorPlan]] = field(default_factory=dict)  # type -> per-tensor plan
    budget: budget_plan.BudgetSummary | None = None  # --max-size / --target-bpw: the plan's figures
    mmproj: Path | None = None  # the vision projector file written beside them (multimodal checkpoints)


def load_hf_model(source: str | Path) -> ModelSource:
    """Index a Hugging Face checkpoint directory as a GGUF model ready to write (reads no weights)."""
    path = resolve_source(source)
    if not path.is_dir():
        raise PhiquantError("not a Hugging Face model directory (expected a folder)", path=path)
    return open_source(path).model


def resolve_outtype(outtype: str, model: ModelSource) -> str:
    outtype = outtype.lower()
    if outtype not in CONVERT_OUTTYPES:
        raise PhiquantError(f"unknown --outtype {outtype!r}; choose one of {', '.join(CONVERT_OUTTYPES)}")
    if outtype == "auto":
        return {GGML_TYPE_BF16: "bf16", GGML_TYPE_F16: "f16"}.get(model.stored_type, "f32")
    return outtype


def convert(
    source: str | Path,
    output: str | Path | None = None,
    outtype: str = "auto",
    *,
    allow_nonfinite: bool = False,
    allow_pickle: bool = False,
    text_only: bool = False,
    mmproj_type: str = DEFAULT_MMPROJ_TYPE,
    threads: int | None = None,
    split_max_size: int | str | None = None,
    split_max_tensors: int | None = None,
    reporter: Reporter = SILENT,
) -> ConvertResult:
    """Convert a Hugging Face Phi checkpoint directory to one GGUF file (f32, f16, bf16 or q8_0).

    `auto` keeps the checkpoint's own precision (BF16 stays BF16).  Q8_0 output is byte-identical
    to llama.cpp's `llama_model_quantize` Q8_0 made from the F32 file.  `allow_pickle` reads a
    checkpoint that has only PyTorch pickles (pytorch_model.bin) through torch's weights-only
    loader, which never runs code from the file; without it such checkpoints are refused.
    `text_only` converts the language model of a multimodal checkpoint (Phi-4-multimodal) alone;
    it is refused otherwise.  `split_max_size` (bytes, or text like "48G") or `split_max_tensors` write
    llama.cpp's shards (`-00001-of-0000N.gguf`) when the model does not fit one.  A vision checkpoint
    (Phi-4-reasoning-vision) also gets its projector file, `<name>-mmproj-<TYPE>.gguf` beside the
    output, in `mmproj_type` (f16, bf16, q8_0 or f32).
    """
    started = time.perf_counter()
    split = split_limits(split_max_size, split_max_tensors)
    source = resolve_source(source)
    if not Path(source).is_dir():
        raise PhiquantError(
            "no such file or directory"
            if not Path(source).exists()
            else "not a Hugging Face model directory",
            path=source,
        )
    mmproj_type = parse_mmproj_type(mmproj_type)
    opened = open_source(source, allow_pickle=allow_pickle, text_only=text_only)
    type_name = resolve_outtype(outtype, opened.model)
    preset = parse_preset(type_name)
    path = Path(output) if output is not None else Path.cwd() / default_file_name(opened.name, preset)
    for warning in opened.model.warnings:
        reporter.warn(warning)
    (planned,) = plan_files(opened, [preset.name], [path], QuantOptions(), split=split)
    write_files(opened, [planned], threads=threads, allow_nonfinite=allow_nonfinite, reporter=reporter)
    mmproj = _write_projector(opened, path.parent, mmproj_type)
    return ConvertResult(
        path=planned.path,
        outtype=type_name,
        file_size=planned.file_size,
        n_tensors=len(opened.model.tensors),
        seconds=time.perf_counter() - started,
        source_bytes=opened.model.source_bytes,
        warnings=list(opened.model.warnings),
        shards=planned.paths if len(planned.paths) > 1 else [],
        mmproj=mmproj,
    )


def _write_projector(opened: Source, directory: Path, mmproj_type: str) -> Path | None:
    projector = opened.model.projector
    if projector is None:
        return None
    return write_mmproj(projector, directory / mmproj_file_name(opened.name, mmproj_type), mmproj_type)


def quantize(
    source: str | Path,
    types: str | Sequence[str],
    output_dir: str | Path = ".",
    *,
    imatrix: str | Path | None = None,
    tensor_types: Sequence[tuple[str, str]] = (),
    output_type: str | None = None,
    embedding_type: str | None = None,
    pure: bool = False,
    allow_fallback: bool = False,
    allow_requantize: bool = False,
    allow_nonfinite: bool = False,
    allow_pickle: bool = False,
    text_only: bool = False,
    mmproj_type: str = DEFAULT_MMPROJ_TYPE,
    threads: int | None = None,
    dry_run: bool = False,
    max_size: int | None = None,
    target_bpw: float | None = None,
    split_max_size: int | str | None = None,
    split_max_tensors: int | None = None,
    reporter: Reporter = SILENT,
) -> QuantizeResult:
    """Quantize a Hugging Face checkpoint or an F32/F16/BF16 GGUF to one or more llama.cpp types in
    one pass over the source, with no intermediate file.  Each file's tensors, types and bytes equal
    what llama.cpp's `llama_model_quantize` makes from the F32 GGUF of the same model.

    `tensor_types` are (regex, type) pairs; the first pattern found in a tensor's name wins, before
    the preset's own rules.  `dry_run` plans and predicts sizes without reading tensor data.
    `allow_pickle` accepts a pickle-only checkpoint, read as `convert` reads it.
    `text_only` quantizes the language model of a multimodal checkpoint (Phi-4-multimodal) alone.
    A vision checkpoint's projector is written once beside the files, in `mmproj_type`, never in the
    text types (llama.cpp's rule: the vision tower is not quantized with the language model).
    `imatrix="auto"` computes (once, then from the cache) an importance matrix over the bundled
    calibration text when a chosen type needs or benefits from one.  `max_size` (bytes) or `target_bpw`
    replace the presets by one file whose per-tensor types minimise the predicted KL divergence under that
    budget (quant.budget); `types` may then be empty.  `split_max_size` / `split_max_tensors` write
    every file of the ladder as llama.cpp's shards when it does not fit one (see `convert`).
    """
    started = time.perf_counter()
    split = split_limits(split_max_size, split_max_tensors)
    names = [types] if isinstance(types, str) else list(types)
    budget_request = budget_plan.budget_request(
        max_size, target_bpw, names, tensor_types, output_type, embedding_type, pure
    )
    if not names and budget_request is None:
        raise PhiquantError("give at least one quantization type")
    presets = [parse_preset(name) for name in names]
    mmproj_type = parse_mmproj_type(mmproj_type)
    source = resolve_source(source)
    opened = open_source(
        source,
        allow_requantize=allow_requantize,
        allow_pickle=allow_pickle,
        text_only=text_only,
    )
    if imatrix is not None and str(imatrix) == "auto":
        from phiquant.imatrix.run import auto_imatrix

        imatrix = auto_imatrix(source, [p.name for p in presets], budget_request is not None, reporter)
    if imatrix is not None:
        attach_imatrix(opened, imatrix)
        from phiquant.imatrix.run import unrouted_expert_warnings

        reporter_warnings = unrouted_expert_warnings(opened.imatrix) if opened.imatrix else []
        for warning in reporter_warnings:
            reporter.warn(warning)
    directory = Path(output_dir)
    budget = None
    more_metadata: list[Metadatum] = []
    if budget_request is not None:
        from phiquant.quant.budget_job import budget_for

        budget, label = budget_for(
            opened,
            Path(source),
            Path(imatrix) if imatrix else None,
            budget_request,
            threads=threads,
            reporter=reporter,
        )
        presets = [parse_preset(label)]
        tensor_types = budget.overrides()
        more_metadata = budget.metadata()
    paths = [directory / default_file_name(opened.name, preset) for preset in presets]
    if budget is not None:
        paths = [directory / f"{opened.name}-budget-{budget.predicted_size}.gguf"]
    options = QuantOptions(
        tensor_types=tuple((pattern, type_name) for pattern, type_name in tensor_types),
        output_type=output_type,
        embedding_type=embedding_type,
        pure=pure,
        has_imatrix=opened.imatrix is not None,
        allow_fallback=allow_fallback,
        allow_requantize=allow_requantize,
    )
    planned = plan_files(opened, [p.name for p in presets], paths, options, imatrix, more_metadata, split)
    warnings = list(opened.model.warnings)
    if allow_requantize and any(_is_quantized_source(opened)):
        warnings.append(
            "requantizing an already quantized file compounds the quality loss of both quantizations"
        )
    for warning in warnings:
        reporter.warn(warning)
    mmproj = None
    if not dry_run:
        _make_output_directory(directory)
        write_files(opened, planned, threads=threads, allow_nonfinite=allow_nonfinite, reporter=reporter)
        mmproj = _write_projector(opened, directory, mmproj_type)
    return QuantizeResult(
        source=str(source),
        files=[_file_result(p, dry_run) for p in planned],
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        notes=sorted({note for p in planned for note in p.plan.notes}),
        warnings=warnings,
        plans={
            p.preset.name: budget_plan.label_plan_rows(p.plan.tensors, budget is not None) for p in planned
        },
        budget=budget_plan.summarise(budget),
        mmproj=mmproj,
    )


def _make_output_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhiquantError(f"cannot create the output directory: {error.strerror}", path=directory) from None


def _is_quantized_source(source: Source) -> list[bool]:
    return [t.base_type not in (0, 1, 30) for t in source.model.tensors]


def _file_result(planned: PlannedFile, dry_run: bool) -> QuantizedFile:
    size = planned.predicted_size if dry_run else planned.file_size
    return QuantizedFile(
        type=planned.preset.name,
        path=planned.path,
        file_size=size,
        bits_per_weight=planned.bits_per_weight,
        seconds=planned.output.seconds,
        fallbacks=[
            f"{t.name}: {t.fallback_from.name} -> {t.target_type.name}"
            for t in planned.plan.fallbacks
            if t.fallback_from
        ],
        shards=planned.paths if len(planned.paths) > 1 else [],
    )


def inspect(path: str | Path) -> GGUFReport:
    """Describe a GGUF file: architecture, key metadata, tensors by type, bits per weight, EOG tokens."""
    return inspect_gguf(Path(path))


def default_text() -> Path:
    """The held-out text phiquant evaluates on unless told otherwise."""
    from phiquant.bundled import heldout_text_path

    return heldout_text_path()


def evaluate(
    files: str | Path | Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    text: str | Path | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    reporter: Reporter = SILENT,
) -> Evaluation:
    """Perplexity of each GGUF file over `text` (default: phiquant's held-out text) in windows of
    `options.ctx` tokens, KL divergence and top-token agreement against the reference (default: the
    F32/BF16/F16 file of the same model among or beside the files), speed, size and bits per weight."""
    from phiquant.evaluate.evaluation import evaluate_files

    paths = [files] if isinstance(files, (str, Path)) else list(files)
    return evaluate_files(
        paths, reference=reference, text=text or default_text(), options=options, reporter=reporter
    )


def gguf_files_in(inputs: Sequence[str | Path]) -> list[Path]:
    """The GGUF files named, with directories standing for every *.gguf file inside them."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.gguf"))
            if not found:
                raise PhiquantError("no .gguf files in this directory", path=item)
            paths += found
        else:
            paths.append(item)
    return paths


def report(
    inputs: str | Path | Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    text: str | Path | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    max_kld: float = DEFAULT_MAX_KLD,
    output_dir: str | Path | None = None,
    plot: bool = True,
    model_name: str = "",
    reporter: Reporter = SILENT,
) -> Report:
    """Evaluate every file of a model (files, or directories of them) and write `<model>-report.md`,
    `.json` and `.png` (size against mean KL divergence, Pareto front marked) into `output_dir`
    (default: the first file's directory), recommending the smallest file under `max_kld`."""
    from phiquant.evaluate.report import build_report, write_report

    if max_kld <= 0:
        raise PhiquantError(f"--max-kld must be positive, not {max_kld}")
    paths = gguf_files_in([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    evaluation = evaluate(paths, reference=reference, text=text, options=options, reporter=reporter)
    name = model_name or _model_name(paths)
    built = build_report(evaluation, max_kld=max_kld, model=name)
    directory = Path(output_dir) if output_dir is not None else paths[0].parent
    return write_report(built, directory, plot=plot)


def _model_name(paths: Sequence[Path]) -> str:
    from phiquant.gguf_io import read_gguf

    name = read_gguf(paths[0]).get("general.name")
    return str(name).replace(" ", "-") if isinstance(name, str) and name else paths[0].stem


def report_quantized(
    source: str | Path,
    result: QuantizeResult,
    *,
    text: str | Path | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    max_kld: float = DEFAULT_MAX_KLD,
    plot: bool = True,
    reporter: Reporter = SILENT,
) -> Report:
    """`quantize --eval`: evaluate the files `quantize` wrote against an unquantized file of the same
    source (the source GGUF itself, a written F32/BF16/F16 file, or a conversion made in a temporary
    directory), and write the report beside them."""

    from phiquant.evaluate.report import build_report, write_report

    written = [f.path for f in result.files]
    if not written:
        raise PhiquantError("nothing was written to evaluate")
    with temporary_files.temporary_directory("phiquant-reference-") as temporary:
        reference = _unquantized_reference(Path(source), result, Path(temporary), reporter)
        files = (
            written if reference in written or reference.parent == Path(temporary) else [reference, *written]
        )
        evaluation = evaluate(files, reference=reference, text=text, options=options, reporter=reporter)
        if reference.parent == Path(temporary):
            evaluation.notes.append(
                f"reference: {reference.name}, converted from {source} for this evaluation and then removed"
            )
    built = build_report(evaluation, max_kld=max_kld, model=_model_name(written))
    return write_report(built, written[0].parent, plot=plot)


def _unquantized_reference(source: Path, result: QuantizeResult, temporary: Path, reporter: Reporter) -> Path:
    for type_name in ("F32", "BF16", "F16"):  # the most faithful written file first
        for file in result.files:
            if file.type.upper() == type_name:
                return file.path
    if source.is_file():
        return source  # quantize reads only F32/BF16/F16 GGUF sources (or requantizes, at the user's word)
    reporter.note("converting the source to an unquantized reference for the evaluation")
    return convert(source, temporary / "reference.gguf", "auto", reporter=reporter).path


def load(
    model: str | Path, options: RunnerOptions | None = None, *, reporter: Reporter = SILENT
) -> ModelRunner:
    """Open a GGUF file, a Hugging Face directory or a model id in the local Hugging Face cache (both
    converted once into phiquant's cache) for generation: context size checked against memory,
    layers placed on the GPU as `options` says.  The runner generates (`generate`, `stream`), answers
    chats (`chat`, `chat_session`); close it (or use `with`) to free the model."""
    from phiquant.runtime.runner import RunnerOptions, open_runner

    return open_runner(model, options or RunnerOptions(), reporter=reporter)


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


@dataclass
class ImatrixResult:
    path: Path
    dataset: str
    chunks: int
    chunk_size: int
    text_tokens: int
    entries: int
    seconds: float
    unrouted_experts: dict[str, list[int]] = field(default_factory=dict)  # tensor -> experts never routed


def imatrix(
    model: str | Path,
    output: str | Path,
    *,
    text: str | Path | None = None,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> ImatrixResult:
    """The importance matrix of every weight matrix of `model` (GGUF or Hugging Face directory) over
    `text` (default: phiquant's calibration text) in chunks of `ctx` tokens, written in llama.cpp's GGUF
    imatrix format (llama-quantize --imatrix reads it)."""
    from phiquant.imatrix.run import compute_imatrix, save_collection

    started = time.perf_counter()
    collection = compute_imatrix(
        model, text=text, chunk_size=ctx, max_chunks=chunks, threads=threads, reporter=reporter
    )
    for name, experts in collection.unrouted_experts.items():
        reporter.warn(f"{name}: the calibration text never routed to experts {experts}")
    path = save_collection(collection, output)
    return ImatrixResult(
        path=path,
        dataset=collection.imatrix.datasets[0],
        chunks=collection.n_chunks,
        chunk_size=collection.chunk_size,
        text_tokens=collection.n_text_tokens,
        entries=collection.imatrix.entries_count,
        seconds=time.perf_counter() - started,
        unrouted_experts=collection.unrouted_experts,
    )


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
    failed model is reported with its reason without stopping the others.  Needs `phiquant[cluster]`."""
    from phiquant.workflows.batch import run_batch
    from phiquant.workflows.batch_jobs import read_jobs

    if cpus_per_task < 1:
        raise PhiquantError(f"--cpus-per-task must be at least 1, not {cpus_per_task}")
    return run_batch(
        read_jobs(jobs), address=address, cpus_per_task=cpus_per_task, retries=retries, reporter=reporter
    )
