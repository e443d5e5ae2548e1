"""An importance-matrix run end to end: a model (GGUF or Hugging Face directory), a calibration text,
llama.cpp's evaluation, a llama.cpp-format imatrix file; and the cache behind `quantize --imatrix auto`.

A Hugging Face directory is first converted at its own precision (BF16 stays BF16) into a temporary
GGUF, because llama.cpp evaluates GGUF files only.  The default calibration text is the bundled one
(Python documentation: prose, code and chat turns, PSF license; bundled/texts/README.md), which is
never the evaluation text.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from phiquant.cache import IMATRIX, cache_key, fingerprint, sub_cache
from phiquant.errors import PhiquantError
from phiquant.imatrix.collect import Collection, calibration_chunks, collect_importance, unrouted_experts
from phiquant.progress import SILENT, Reporter
from phiquant.quant.imatrix import ImportanceMatrix, write_imatrix

DEFAULT_CHUNK_SIZE = 512
MIN_CHUNK_SIZE = 32  # llama.cpp records no plain product of a batch under 16 tokens
BUNDLED_DATASET = "phiquant:bundled/texts/calibration.txt"


@dataclass(frozen=True)
class CalibrationText:
    text: str
    dataset: str  # what the imatrix records as its dataset
    path: Path | None


def calibration_text(path: str | Path | None) -> CalibrationText:
    """The user's text file, or the bundled calibration text."""
    from phiquant.bundled import calibration_text_path, heldout_text_path

    if path is None:
        bundled = calibration_text_path()
        return CalibrationText(bundled.read_text(encoding="utf-8"), BUNDLED_DATASET, bundled)
    path = Path(path)
    if path.resolve() == heldout_text_path().resolve():
        raise PhiquantError(
            "this is phiquant's evaluation text; calibrating on it would make the evaluation meaningless",
            path=path,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PhiquantError(f"cannot read the calibration text: {error.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise PhiquantError("the calibration text is not UTF-8", path=path) from None
    return CalibrationText(text, path.name, path)


@contextmanager
def gguf_of(source: str | Path, reporter: Reporter = SILENT) -> Iterator[Path]:
    """The source itself if it is a GGUF file, else its conversion in a temporary directory."""
    source = Path(source)
    if source.is_file():
        yield source
        return
    if not source.is_dir():
        raise PhiquantError("no such file or directory", path=source)
    from phiquant import api

    with tempfile.TemporaryDirectory(prefix="phiquant-imatrix-") as temporary:
        reporter.note("converting the checkpoint to GGUF for llama.cpp's evaluation")
        yield api.convert(source, Path(temporary) / "model.gguf", "auto", reporter=reporter).path


def compute_imatrix(
    source: str | Path,
    *,
    text: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_chunks: int | None = None,
    include_output: bool = True,
    threads: int | None = None,
    reporter: Reporter = SILENT,
) -> Collection:
    if chunk_size < MIN_CHUNK_SIZE:
        raise PhiquantError(f"--ctx must be at least {MIN_CHUNK_SIZE} tokens, not {chunk_size}")
    if max_chunks is not None and max_chunks < 1:
        raise PhiquantError(f"--chunks must be at least 1, not {max_chunks}")
    calibration = calibration_text(text)
    from phiquant.runtime.loader import load_model

    with gguf_of(source, reporter) as path, load_model(path) as model:
        if chunk_size > model.n_ctx_train:
            reporter.warn(
                f"--ctx {chunk_size} is longer than the model's training context ({model.n_ctx_train})"
            )
        chunks, n_tokens = calibration_chunks(
            model, calibration.text, chunk_size, max_chunks, calibration.path
        )
        return collect_importance(
            model,
            chunks,
            calibration.dataset,
            n_text_tokens=n_tokens,
            include_output=include_output,
            threads=threads,
            reporter=reporter,
        )


def save_collection(collection: Collection, output: str | Path) -> Path:
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhiquantError(
            f"cannot create the output directory: {error.strerror}", path=output.parent
        ) from None
    write_imatrix(output, collection.imatrix)
    return output


def cached_imatrix(source: str | Path, reporter: Reporter = SILENT) -> Path:
    """`--imatrix auto`: the bundled-text imatrix of this model, computed once and kept in the cache."""
    from phiquant.bundled import calibration_text_path

    key = cache_key(fingerprint(source), fingerprint(calibration_text_path()), DEFAULT_CHUNK_SIZE)
    path = sub_cache(IMATRIX) / f"{key}.gguf"
    if path.is_file():
        reporter.note(f"importance matrix from the cache: {path}")
        return path
    reporter.note("computing an importance matrix over the bundled calibration text (--imatrix auto)")
    collection = compute_imatrix(source, reporter=reporter)
    return save_collection(collection, path)  # written to a temporary name, then renamed


def unrouted_expert_warnings(imatrix: ImportanceMatrix) -> list[str]:
    """Experts the imatrix's text never routed to have no statistics: like llama.cpp, phiquant quantizes
    them with uniform weights (plain error minimisation, what they would get without an imatrix) rather
    than with zeros, which would make the weighted quantizers pick arbitrary scales."""
    found = unrouted_experts(imatrix)
    if not found:
        return []
    n_experts = sum(len(experts) for experts in found.values())
    return [
        f"the importance matrix has no data for {n_experts} expert matrices in {len(found)} tensors "
        f"(e.g. {next(iter(found))} experts {next(iter(found.values()))}): they are quantized with "
        "uniform importance, as without an imatrix"
    ]


# Types whose quantizers use an importance matrix (ggml's quantize_* take quant_weights); Q8_0 and the
# float types ignore it.
_IMATRIX_IGNORED = frozenset({"F32", "F16", "BF16", "Q8_0"})


def auto_imatrix(
    source: str | Path, preset_names: list[str], budget: bool, reporter: Reporter = SILENT
) -> Path | None:
    """`--imatrix auto`: the cached imatrix when a chosen type (or a budget's candidates) uses one."""
    if not budget and all(name in _IMATRIX_IGNORED for name in preset_names):
        reporter.note("--imatrix auto: no chosen type uses an importance matrix; none computed")
        return None
    return cached_imatrix(source, reporter)
