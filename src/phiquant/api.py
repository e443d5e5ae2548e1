"""phiquant's Python API.  The CLI is a thin layer over these functions; notebooks call them directly.

Every function returns plain dataclasses and reports progress through a `Reporter` (silent unless
you pass one); none prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from phiquant import interim_quant
from phiquant.archs import load_model_source
from phiquant.archs.common import model_name
from phiquant.checkpoint.directory import open_checkpoint
from phiquant.errors import PhiquantError
from phiquant.gguf_io import format_bytes
from phiquant.inspection import GGUFReport, inspect_gguf
from phiquant.model_source import ModelSource
from phiquant.pipeline import OutputPlan, write_gguf_files
from phiquant.progress import SILENT, Reporter

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


def load_hf_model(source: str | Path) -> ModelSource:
    """Index a Hugging Face checkpoint directory as a GGUF model ready to write (reads no weights)."""
    checkpoint = open_checkpoint(source)
    return load_model_source(checkpoint)


def resolve_outtype(outtype: str, model: ModelSource) -> str:
    outtype = outtype.lower()
    if outtype not in CONVERT_OUTTYPES:
        raise PhiquantError(f"unknown --outtype {outtype!r}; choose one of {', '.join(CONVERT_OUTTYPES)}")
    if outtype == "auto":
        return interim_quant.stored_type_name(model.stored_type)
    return outtype


def default_output_path(source: str | Path, type_name: str) -> Path:
    """Hugging Face's naming convention, in the current directory: <Model-Name>-<TYPE>.gguf."""
    checkpoint = open_checkpoint(source)
    return Path.cwd() / f"{model_name(checkpoint)}-{type_name.upper()}.gguf"


def convert(
    source: str | Path,
    output: str | Path | None = None,
    outtype: str = "auto",
    *,
    allow_nonfinite: bool = False,
    reporter: Reporter = SILENT,
) -> ConvertResult:
    """Convert a Hugging Face Phi checkpoint directory to one GGUF file (f32, f16, bf16 or q8_0).

    `auto` keeps the checkpoint's own precision (BF16 stays BF16).  Q8_0 output is byte-identical
    to llama.cpp's `llama_model_quantize` Q8_0 made from the F32 file.
    """
    started = time.perf_counter()
    model = load_hf_model(source)
    type_name = resolve_outtype(outtype, model)
    path = Path(output) if output is not None else default_output_path(source, type_name)
    plan = OutputPlan(path, interim_quant.FILE_TYPES[type_name], interim_quant.plan_types(model, type_name))
    for warning in model.warnings:
        reporter.warn(warning)
    write_gguf_files(
        model,
        [plan],
        interim_quant.encode_rows,
        interim_quant.row_size,
        allow_nonfinite=allow_nonfinite,
        reporter=reporter,
    )
    return ConvertResult(
        path=path,
        outtype=type_name,
        file_size=path.stat().st_size,
        n_tensors=len(model.tensors),
        seconds=time.perf_counter() - started,
        source_bytes=model.source_bytes,
        warnings=list(model.warnings),
    )


def inspect(path: str | Path) -> GGUFReport:
    """Describe a GGUF file: architecture, key metadata, tensors by type, bits per weight, EOG tokens."""
    return inspect_gguf(Path(path))


def describe_size(n: int) -> str:
    return format_bytes(n)
