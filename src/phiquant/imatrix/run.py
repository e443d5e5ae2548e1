"""An importance-matrix run: a GGUF model, a calibration text, llama.cpp's evaluation, a llama.cpp-format
imatrix file.  (Hugging Face directories and `quantize --imatrix auto` are workflows: phiquant.workflows.)

The default calibration text is the bundled one
(Python documentation: prose, code and chat turns, PSF license; bundled/texts/README.md), which is
never the evaluation text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phiquant.bundled import calibration_text_path, heldout_text_path
from phiquant.errors import PhiquantError, make_output_directory
from phiquant.imatrix.collect import Collection, calibration_chunks, collect_importance, unrouted_experts
from phiquant.imatrix.files import ImportanceMatrix, write_imatrix
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.loader import load_model

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


def compute_imatrix(
    gguf: str | Path,
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
    with load_model(gguf) as model:
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
    make_output_directory(output.parent)
    write_imatrix(output, collection.imatrix)
    return output


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
