"""`quantize`: a source to one or more llama.cpp types in one pass, or to one file under a size budget.

The flow: a request (workflows.quantize_request, checked when it is made) is planned first: open the
source, attach an importance matrix (given, or `auto`: computed once and cached), plan every file
(presets, or the budget planner's per-tensor types).  Then the files are written in one pass over
the source.  `report_quantized` is `quantize --eval`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError, make_output_directory
from phiquant.evaluate.evaluation import evaluate
from phiquant.evaluate.options import DEFAULT_MAX_KLD, DEFAULT_OPTIONS, EvalOptions
from phiquant.evaluate.report import Report, build_report, write_report
from phiquant.gguf_io.mmproj_writer import parse_mmproj_type
from phiquant.hub import resolve_source
from phiquant.imatrix.run import unrouted_expert_warnings
from phiquant.model_source import Metadatum
from phiquant.progress import SILENT, Reporter
from phiquant.quant import budget_plan
from phiquant.quant.plan import QuantOptions, TensorPlan
from phiquant.quant.types import parse_preset
from phiquant.workflows.as_gguf import as_gguf
from phiquant.workflows.budget.job import budget_for
from phiquant.workflows.convert import write_projector
from phiquant.workflows.imatrix import auto_imatrix
from phiquant.workflows.job import (
    PlannedFile,
    Source,
    attach_imatrix,
    default_file_name,
    open_source,
    plan_files,
    write_files,
)
from phiquant.workflows.quantize_request import Presets, QuantizeRequest
from phiquant.workflows.report import gguf_model_name


@dataclass
class QuantizedFile:
    type: str
    path: Path
    file_size: int
    bits_per_weight: float
    seconds: float
    fallbacks: list[str] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)  # a split file's shards (`path` is the first)


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


@dataclass
class QuantizePlan:
    """A request planned: every file's tensors, types and predicted size, before anything is written."""

    request: QuantizeRequest
    source: Path
    opened: Source
    files: list[PlannedFile]
    budget: budget_plan.BudgetPlan | None
    warnings: list[str]


def quantize(
    source: str | Path,
    types: str | Sequence[str] = (),
    output_dir: str | Path = ".",
    *,
    reporter: Reporter = SILENT,
    **options: Any,
) -> QuantizeResult:
    """Quantize a Hugging Face checkpoint or an F32/F16/BF16 GGUF to one or more llama.cpp types in
    one pass over the source, with no intermediate file.  Each file's tensors, types and bytes equal
    what llama.cpp's `llama_model_quantize` makes from the F32 GGUF of the same model.

    `options` are the fields of the request's parts, by name (`QuantizeRequest.from_options`; each is
    a `phiquant quantize` flag): `imatrix`, `allow_requantize`, `text_only`, `mmproj_type`,
    `allow_pickle` (SourceOptions); `max_size` (bytes) or `target_bpw` instead of `types` for one file
    under a size budget (MaxSize, TargetBpw); `tensor_types` ((regex, type) pairs), `output_type`,
    `embedding_type`, `pure` (Overrides, presets only); `threads`, `allow_fallback`, `allow_nonfinite`,
    `split_max_size`, `split_max_tensors`, `dry_run` (RunOptions).  `run_quantize` takes the request.
    """
    request = QuantizeRequest.from_options(source=source, types=types, output_dir=output_dir, **options)
    return run_quantize(request, reporter)


def run_quantize(request: QuantizeRequest, reporter: Reporter = SILENT) -> QuantizeResult:
    """Plan the request (`plan_quantize`), then, unless it is a dry run, write its files in one pass
    over the source, and a vision checkpoint's projector beside them."""
    started = time.perf_counter()
    planned = plan_quantize(request, reporter)
    run = request.run
    mmproj = None
    if not run.dry_run:
        directory = Path(run.output_dir)
        make_output_directory(directory)
        write_files(
            planned.opened,
            planned.files,
            threads=run.threads,
            allow_nonfinite=run.allow_nonfinite,
            reporter=reporter,
        )
        mmproj = write_projector(planned.opened, directory, parse_mmproj_type(request.source.mmproj_type))
    return QuantizeResult(
        source=str(planned.source),
        files=[_file_result(p, run.dry_run) for p in planned.files],
        seconds=time.perf_counter() - started,
        dry_run=run.dry_run,
        notes=sorted({note for p in planned.files for note in p.plan.notes}),
        warnings=planned.warnings,
        plans={
            p.preset.name: budget_plan.label_plan_rows(p.plan.tensors, planned.budget is not None)
            for p in planned.files
        },
        budget=budget_plan.summarise(planned.budget),
        mmproj=mmproj,
    )


def plan_quantize(request: QuantizeRequest, reporter: Reporter = SILENT) -> QuantizePlan:
    """Open the source, attach the importance matrix (`auto`: computed once and cached), and plan every
    file: the presets with their overrides, or the budget planner's per-tensor types.  Nothing is
    written to the output directory."""
    wanted, run = request.source, request.run
    source = resolve_source(wanted.source)
    opened = open_source(
        source,
        allow_requantize=wanted.allow_requantize,
        allow_pickle=wanted.allow_pickle,
        text_only=wanted.text_only,
    )
    preset_names = list(request.make.types) if isinstance(request.make, Presets) else []
    imatrix = wanted.imatrix
    if imatrix is not None and str(imatrix) == "auto":
        imatrix = auto_imatrix(source, preset_names, request.budget is not None, reporter)
    if imatrix is not None:
        attach_imatrix(opened, imatrix)
        for warning in unrouted_expert_warnings(opened.imatrix) if opened.imatrix else []:
            reporter.warn(warning)
    directory = Path(run.output_dir)
    overrides = request.overrides
    tensor_types = overrides.tensor_types
    budget = None
    more_metadata: list[Metadatum] = []
    if request.budget is not None:
        budget, label = budget_for(
            opened,
            Path(source),
            Path(imatrix) if imatrix else None,
            request.budget,
            threads=run.threads,
            reporter=reporter,
        )
        preset_names = [label]
        tensor_types = budget.overrides()
        more_metadata = budget.metadata()
    presets = [parse_preset(name) for name in preset_names]
    paths = [directory / default_file_name(opened.name, preset) for preset in presets]
    if budget is not None:
        paths = [directory / f"{opened.name}-budget-{budget.predicted_size}.gguf"]
    options = QuantOptions(
        tensor_types=tuple((pattern, type_name) for pattern, type_name in tensor_types),
        output_type=overrides.output_type,
        embedding_type=overrides.embedding_type,
        pure=overrides.pure,
        has_imatrix=opened.imatrix is not None,
        allow_fallback=run.allow_fallback,
        allow_requantize=wanted.allow_requantize,
    )
    files = plan_files(opened, [p.name for p in presets], paths, options, imatrix, more_metadata, run.split())
    warnings = list(opened.model.warnings)
    if budget is not None and budget.fit_warning:
        warnings.append(budget.fit_warning)
    if wanted.allow_requantize and any(_is_quantized_source(opened)):
        warnings.append(
            "requantizing an already quantized file compounds the quality loss of both quantizations"
        )
    for warning in warnings:
        reporter.warn(warning)
    return QuantizePlan(request, source, opened, files, budget, warnings)


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
    written = [f.path for f in result.files]
    if not written:
        raise PhiquantError("nothing was written to evaluate")
    written_reference = _written_reference(result)
    with as_gguf(written_reference or source, reporter=reporter) as converted:
        reference = converted.gguf
        files = written if reference in written or converted.converted else [reference, *written]
        evaluation = evaluate(files, reference=reference, text=text, options=options, reporter=reporter)
        if converted.converted:
            evaluation.notes.append(
                f"reference: {reference.name}, converted from {source} for this evaluation and then removed"
            )
    built = build_report(evaluation, max_kld=max_kld, model=gguf_model_name(written))
    return write_report(built, written[0].parent, plot=plot)


def _written_reference(result: QuantizeResult) -> Path | None:
    """The most faithful unquantized file `quantize` wrote, if any; else the source is the reference
    (quantize reads only F32/BF16/F16 GGUF sources, or requantizes at the user's word)."""
    for type_name in ("F32", "BF16", "F16"):
        for file in result.files:
            if file.type.upper() == type_name:
                return file.path
    return None
