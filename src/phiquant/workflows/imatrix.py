"""Importance matrices as workflows: of any source (a Hugging Face directory is converted first, in a
temporary directory), and `quantize --imatrix auto` (computed once per model over the bundled
calibration text, then taken from the cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from phiquant.bundled import calibration_text_path
from phiquant.cache import IMATRIX, cache_key, fingerprint, sub_cache
from phiquant.imatrix.run import DEFAULT_CHUNK_SIZE, compute_imatrix, save_collection
from phiquant.progress import SILENT, Reporter
from phiquant.workflows.as_gguf import as_gguf

# Types whose quantizers use an importance matrix (ggml's quantize_* take quant_weights); Q8_0 and the
# float types ignore it.
_IMATRIX_IGNORED = frozenset({"F32", "F16", "BF16", "Q8_0"})


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
    started = time.perf_counter()
    with as_gguf(model, reporter=reporter) as gguf:
        collection = compute_imatrix(
            gguf.gguf, text=text, chunk_size=ctx, max_chunks=chunks, threads=threads, reporter=reporter
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


def cached_imatrix(source: str | Path, reporter: Reporter = SILENT) -> Path:
    """`--imatrix auto`: the bundled-text imatrix of this model, computed once and kept in the cache."""
    key = cache_key(fingerprint(source), fingerprint(calibration_text_path()), DEFAULT_CHUNK_SIZE)
    path = sub_cache(IMATRIX) / f"{key}.gguf"
    if path.is_file():
        reporter.note(f"importance matrix from the cache: {path}")
        return path
    reporter.note("computing an importance matrix over the bundled calibration text (--imatrix auto)")
    with as_gguf(source, reporter=reporter) as gguf:
        collection = compute_imatrix(gguf.gguf, reporter=reporter)
    return save_collection(collection, path)  # written to a temporary name, then renamed


def auto_imatrix(
    source: str | Path, preset_names: list[str], budget: bool, reporter: Reporter = SILENT
) -> Path | None:
    """`--imatrix auto`: the cached imatrix when a chosen type (or a budget's candidates) uses one."""
    if not budget and all(name in _IMATRIX_IGNORED for name in preset_names):
        reporter.note("--imatrix auto: no chosen type uses an importance matrix; none computed")
        return None
    return cached_imatrix(source, reporter)
