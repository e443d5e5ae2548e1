"""`quantize`: a source to one or more llama.cpp types in one pass, or to one file under a size budget.

The flow: open the source, attach an importance matrix (given, or `auto`: computed once and cached),
plan every file (presets, or the budget planner's per-tensor types), then write them all in one pass
over the source.  `report_quantized` is `quantize --eval`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phiquant.errors import PhiquantError, make_output_directory
from phiquant.evaluate.evaluation import evaluate
from phiquant.evaluate.options import DEFAULT_MAX_KLD, DEFAULT_OPTIONS, EvalOptions
from phiquant.evaluate.report import Report, build_report, write_report
from phiquant.gguf_io.mmproj_writer import DEFAULT_MMPROJ_TYPE, parse_mmproj_type
from phiquant.hub import resolve_source
from phiquant.imatrix.run import unrouted_expert_warnings
from phiquant.model_source import Metadatum
from phiquant.progress import SILENT, Reporter
from phiquant.quant import budget_plan
from phiquant.quant.plan import QuantOptions, TensorPlan
from phiquant.quant.types import parse_preset
from phiquant.workflows.as_gguf import as_gguf
from phiquant.workflows.budget.job import budget_for
from phiquant.workflows.convert import split_limits, write_projector
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
        imatrix = auto_imatrix(source, [p.name for p in presets], budget_request is not None, reporter)
    if imatrix is not None:
        attach_imatrix(opened, imatrix)
        reporter_warnings = unrouted_expert_warnings(opened.imatrix) if opened.imatrix else []
        for warning in reporter_warnings:
            reporter.warn(warning)
    directory = Path(output_dir)
    budget = None
    more_metadata: list[Metadatum] = []
    if budget_request is not None:
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
    if budget is not None and budget.fit_warning:
        warnings.append(budget.fit_warning)
    if allow_requantize and any(_is_quantized_source(opened)):
        warnings.append(
            "requantizing an already quantized file compounds the quality loss of both quantizations"
        )
    for warning in warnings:
        reporter.warn(warning)
    mmproj = None
    if not dry_run:
        make_output_directory(directory)
        write_files(opened, planned, threads=threads, allow_nonfinite=allow_nonfinite, reporter=reporter)
        mmproj = write_projector(opened, directory, mmproj_type)
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
