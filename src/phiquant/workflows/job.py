"""A quantization run: from a source (Hugging Face directory or GGUF) and a list of presets to files.

Planning is separate from writing, so `--dry-run` shows exactly what a run would write (types,
sizes, bits per weight) without touching tensor data, and one pass over the source writes every
file of a ladder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from phiquant.archs import load_model_source
from phiquant.archs.common import provenance_metadata
from phiquant.checkpoint.directory import open_checkpoint
from phiquant.errors import PhiquantError
from phiquant.ggml import kernels as ggml
from phiquant.gguf_io.split import SplitLimits
from phiquant.gguf_source import load_gguf_source
from phiquant.imatrix.files import ImportanceMatrix, imatrix_weights_for_model, read_imatrix
from phiquant.model_source import Metadatum, ModelSource
from phiquant.pipeline import OutputPlan, planned_paths, predicted_size, tensor_descs, write_gguf_files
from phiquant.progress import SILENT, Reporter
from phiquant.quant.plan import QuantOptions, QuantPlan, model_facts_from_metadata, plan_quantization
from phiquant.quant.quantize import imatrix_kv_overrides, quantize_rows
from phiquant.quant.types import Preset, parse_preset

_FLOAT_NAME_SUFFIX = re.compile(r"-(F32|F16|BF16)$", re.IGNORECASE)


@dataclass
class PlannedFile:
    preset: Preset
    path: Path
    plan: QuantPlan
    predicted_size: int
    output: OutputPlan
    paths: list[Path] = field(default_factory=list)  # the files written: `path`, or its shards

    def __post_init__(self) -> None:
        self.paths = self.paths or [self.path]

    @property
    def file_size(self) -> int:
        """Bytes on disk of the written file or shards."""
        return sum(path.stat().st_size for path in self.paths)

    @property
    def bits_per_weight(self) -> float:
        return self.plan.bits_per_weight


@dataclass
class Source:
    """An opened source: the model to write and the name its files are called after."""

    model: ModelSource
    name: str
    imatrix: ImportanceMatrix | None = None
    importance: dict[str, np.ndarray] = field(default_factory=dict)


def open_source(
    path: str | Path, *, allow_requantize: bool = False, allow_pickle: bool = False, text_only: bool = False
) -> Source:
    """A Hugging Face checkpoint directory (safetensors; PyTorch pickles only if allowed), or an
    F32/F16/BF16 (or, if allowed, quantized) GGUF.  `text_only` takes a multimodal checkpoint's
    language model alone."""
    path = Path(path)
    if path.is_dir():
        checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
        from phiquant.archs.common import model_name

        return Source(load_model_source(checkpoint, text_only=text_only), model_name(checkpoint))
    if text_only:
        raise PhiquantError(
            "--text-only applies to Hugging Face checkpoint directories, not GGUF files", path=path
        )
    if path.suffix.lower() == ".gguf" or path.is_file():
        model = load_gguf_source(path, allow_requantize=allow_requantize, dequantize=_dequantize)
        return Source(model, _FLOAT_NAME_SUFFIX.sub("", path.stem))
    raise PhiquantError("no such file or directory", path=path)


def _dequantize(raw: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    return ggml.dequantize(ggml_type, raw, n_elements)


def attach_imatrix(source: Source, imatrix_path: str | Path) -> None:
    """Read an importance matrix and check it belongs to this model (names and sizes)."""
    source.imatrix = read_imatrix(imatrix_path)
    source.importance = imatrix_weights_for_model(source.imatrix, tensor_descs(source.model))


def model_metadata_map(model: ModelSource) -> dict[str, object]:
    return {"general.architecture": model.arch, **{m.key: m.value for m in model.metadata}}


def extra_metadata(source: Source, imatrix_path: str | Path | None) -> list[Metadatum]:
    """Keys a quantized file carries beyond its source's: provenance (if the source lacks it) and
    the quantize.imatrix.* keys llama.cpp's quantize tool writes."""
    present = {m.key for m in source.model.metadata}
    items = [m for m in provenance_metadata() if m.key not in present]
    if source.imatrix is not None and imatrix_path is not None:
        for override in imatrix_kv_overrides(
            str(imatrix_path),
            list(source.imatrix.datasets),
            len(source.importance),
            source.imatrix.chunk_count,
        ):
            value_type = GGUFValueType.STRING if override.gguf_type == "str" else GGUFValueType.UINT32
            items.append(Metadatum(override.key, override.value, value_type))
    return items


def plan_files(
    source: Source,
    presets: list[str],
    output_paths: list[Path],
    options: QuantOptions | Sequence[QuantOptions],
    imatrix_path: str | Path | None = None,
    more_metadata: Sequence[Metadatum] = (),
    split: SplitLimits | None = None,
) -> list[PlannedFile]:
    """One planned file per (preset, path): `options` for all of them, or one per file (a ladder of
    differently configured files, written in one pass by `write_files`).  `more_metadata`: keys the files
    carry beyond the usual ones (a budget plan's phiquant.budget.*); `split`: write each file as shards
    (its `path` is then the first shard, what llama.cpp loads)."""
    facts = model_facts_from_metadata(model_metadata_map(source.model))
    descs = tensor_descs(source.model)
    extra = extra_metadata(source, imatrix_path) + list(more_metadata)
    per_file = [options] * len(presets) if isinstance(options, QuantOptions) else list(options)
    if len(per_file) != len(presets):
        raise ValueError(f"{len(per_file)} option sets for {len(presets)} files")
    planned = []
    for name, path, file_options in zip(presets, output_paths, per_file):
        preset = parse_preset(name)
        plan = plan_quantization(descs, facts, preset, file_options)
        output = OutputPlan.from_quant_plan(path, plan, extra, split)
        paths = planned_paths(source.model, output, ggml.row_size)
        size = predicted_size(source.model, output, ggml.row_size)
        planned.append(PlannedFile(preset, paths[0], plan, size, output, paths))
    return planned


def write_files(
    source: Source,
    planned: list[PlannedFile],
    *,
    threads: int | None = None,
    allow_nonfinite: bool = False,
    reporter: Reporter = SILENT,
) -> None:
    # The pipeline already spreads the slabs over `threads` workers and scans each for NaN/Inf (unless
    # allowed), so each call quantizes its rows on the calling worker, without a pool of its own and
    # without scanning again: nested pools oversubscribed the cores and spawned a pool per slab.
    def encode(rows: np.ndarray, ggml_type: int, importance: np.ndarray | None, name: str) -> np.ndarray:
        return quantize_rows(
            rows,
            ggml_type,
            importance,
            n_threads=1,
            tensor_name=name,
            allow_nonfinite=allow_nonfinite,
            assume_finite=not allow_nonfinite,
        )

    write_gguf_files(
        source.model,
        [p.output for p in planned],
        encode,
        ggml.row_size,
        importance=source.importance or None,
        allow_nonfinite=allow_nonfinite,
        threads=threads,
        reporter=reporter,
    )


def default_file_name(name: str, preset: Preset) -> str:
    """Hugging Face's convention: <Model-Name>-<TYPE>.gguf."""
    return f"{name}-{preset.name}.gguf"
