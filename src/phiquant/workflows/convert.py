"""`convert`: a Hugging Face Phi checkpoint directory to one GGUF file (f32, f16, bf16 or q8_0).

A thin flow over the quantization job: open the checkpoint, plan the one file, write it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from phiquant.errors import PhiquantError
from phiquant.ggml.types import GGMLType
from phiquant.gguf_io.mmproj_writer import (
    DEFAULT_MMPROJ_TYPE,
    mmproj_file_name,
    parse_mmproj_type,
    write_mmproj,
)
from phiquant.gguf_io.split import SplitLimits, parse_split_size
from phiquant.hub import resolve_source
from phiquant.model_source import ModelSource
from phiquant.progress import SILENT, Reporter
from phiquant.quant.plan import QuantOptions
from phiquant.quant.types import parse_preset
from phiquant.workflows.job import Source, default_file_name, open_source, plan_files, write_files

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


def split_limits(split_max_size: int | str | None, split_max_tensors: int | None) -> SplitLimits | None:
    """Shard limits from the --split-max-size / --split-max-tensors options (None: one file)."""
    if split_max_size is None and split_max_tensors is None:
        return None
    size = parse_split_size(split_max_size) if isinstance(split_max_size, str) else split_max_size
    return SplitLimits(size, split_max_tensors)


def resolve_outtype(outtype: str, model: ModelSource) -> str:
    outtype = outtype.lower()
    if outtype not in CONVERT_OUTTYPES:
        raise PhiquantError(f"unknown --outtype {outtype!r}; choose one of {', '.join(CONVERT_OUTTYPES)}")
    if outtype == "auto":
        by_type: dict[int, str] = {GGMLType.BF16: "bf16", GGMLType.F16: "f16"}
        return by_type.get(model.stored_type, "f32")
    return outtype


def convert(
    source: str | Path,
    output: str | Path | None = None,
    outtype: str = "auto",
    *,
    allow_nonfinite: bool = False,
    allow_pickle: bool = False,
    text_only: bool = False,
    threads: int | None = None,
    split_max_size: int | str | None = None,
    split_max_tensors: int | None = None,
    mmproj_type: str = DEFAULT_MMPROJ_TYPE,
    reporter: Reporter = SILENT,
) -> ConvertResult:
    """Convert a checkpoint directory to one GGUF file (phiquant.api.convert documents the options)."""
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
    mmproj = write_projector(opened, path.parent, mmproj_type)
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


def write_projector(opened: Source, directory: Path, mmproj_type: str) -> Path | None:
    """A vision checkpoint's projector file beside its language model (None for text models)."""
    projector = opened.model.projector
    if projector is None:
        return None
    return write_mmproj(projector, directory / mmproj_file_name(opened.name, mmproj_type), mmproj_type)
