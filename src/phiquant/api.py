"""phiquant's Python API.  The CLI is a thin layer over these functions; notebooks call them directly.

Every function returns plain dataclasses and reports progress through a `Reporter` (silent unless
you pass one); none prints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phiquant.errors import PhiquantError
from phiquant.inspection import GGUFReport, inspect_gguf
from phiquant.model_source import GGML_TYPE_BF16, GGML_TYPE_F16, ModelSource
from phiquant.progress import SILENT, Reporter
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


@dataclass
class QuantizedFile:
    type: str
    path: Path
    file_size: int
    bits_per_weight: float
    seconds: float
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class QuantizeResult:
    source: str
    files: list[QuantizedFile]
    seconds: float
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plans: dict[str, list[TensorPlan]] = field(default_factory=dict)  # type -> per-tensor plan


def load_hf_model(source: str | Path) -> ModelSource:
    """Index a Hugging Face checkpoint directory as a GGUF model ready to write (reads no weights)."""
    path = Path(source)
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
    text_only: bool = False,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> ConvertResult:
    """Convert a Hugging Face Phi checkpoint directory to one GGUF file (f32, f16, bf16 or q8_0).

    `auto` keeps the checkpoint's own precision (BF16 stays BF16).  Q8_0 output is byte-identical
    to llama.cpp's `llama_model_quantize` Q8_0 made from the F32 file.  `text_only` converts the
    language model of a multimodal checkpoint (Phi-4-multimodal) alone; it is refused otherwise.
    """
    started = time.perf_counter()
    if not Path(source).is_dir():
        raise PhiquantError(
            "no such file or directory"
            if not Path(source).exists()
            else "not a Hugging Face model directory",
            path=source,
        )
    opened = open_source(source, text_only=text_only)
    type_name = resolve_outtype(outtype, opened.model)
    preset = parse_preset(type_name)
    path = Path(output) if output is not None else Path.cwd() / default_file_name(opened.name, preset)
    for warning in opened.model.warnings:
        reporter.warn(warning)
    (planned,) = plan_files(opened, [preset.name], [path], QuantOptions())
    write_files(opened, [planned], threads=threads, allow_nonfinite=allow_nonfinite, reporter=reporter)
    return ConvertResult(
        path=path,
        outtype=type_name,
        file_size=path.stat().st_size,
        n_tensors=len(opened.model.tensors),
        seconds=time.perf_counter() - started,
        source_bytes=opened.model.source_bytes,
        warnings=list(opened.model.warnings),
    )


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
    text_only: bool = False,
    threads: int | None = None,
    dry_run: bool = False,
    reporter: Reporter = SILENT,
) -> QuantizeResult:
    """Quantize a Hugging Face checkpoint or an F32/F16/BF16 GGUF to one or more llama.cpp types in
    one pass over the source, with no intermediate file.  Each file's tensors, types and bytes equal
    what llama.cpp's `llama_model_quantize` makes from the F32 GGUF of the same model.

    `tensor_types` are (regex, type) pairs; the first pattern found in a tensor's name wins, before
    the preset's own rules.  `dry_run` plans and predicts sizes without reading tensor data.
    `text_only` quantizes the language model of a multimodal checkpoint (Phi-4-multimodal) alone.
    """
    started = time.perf_counter()
    names = [types] if isinstance(types, str) else list(types)
    if not names:
        raise PhiquantError("give at least one quantization type")
    presets = [parse_preset(name) for name in names]
    opened = open_source(source, allow_requantize=allow_requantize, text_only=text_only)
    if imatrix is not None:
        attach_imatrix(opened, imatrix)
    directory = Path(output_dir)
    paths = [directory / default_file_name(opened.name, preset) for preset in presets]
    options = QuantOptions(
        tensor_types=tuple((pattern, type_name) for pattern, type_name in tensor_types),
        output_type=output_type,
        embedding_type=embedding_type,
        pure=pure,
        has_imatrix=opened.imatrix is not None,
        allow_fallback=allow_fallback,
        allow_requantize=allow_requantize,
    )
    planned = plan_files(opened, [p.name for p in presets], paths, options, imatrix)
    warnings = list(opened.model.warnings)
    if allow_requantize and any(_is_quantized_source(opened)):
        warnings.append(
            "requantizing an already quantized file compounds the quality loss of both quantizations"
        )
    for warning in warnings:
        reporter.warn(warning)
    if not dry_run:
        _make_output_directory(directory)
        write_files(opened, planned, threads=threads, allow_nonfinite=allow_nonfinite, reporter=reporter)
    return QuantizeResult(
        source=str(source),
        files=[_file_result(p, dry_run) for p in planned],
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        notes=sorted({note for p in planned for note in p.plan.notes}),
        warnings=warnings,
        plans={p.preset.name: list(p.plan.tensors) for p in planned},
    )


def _make_output_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhiquantError(f"cannot create the output directory: {error.strerror}", path=directory) from None


def _is_quantized_source(source: Source) -> list[bool]:
    return [t.base_type not in (0, 1, 30) for t in source.model.tensors]


def _file_result(planned: PlannedFile, dry_run: bool) -> QuantizedFile:
    size = planned.predicted_size if dry_run else planned.path.stat().st_size
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
    )


def inspect(path: str | Path) -> GGUFReport:
    """Describe a GGUF file: architecture, key metadata, tensors by type, bits per weight, EOG tokens."""
    return inspect_gguf(Path(path))
