"""phiquant's cache: one directory, one fingerprint, named sub-caches.

The directory is $PHIQUANT_CACHE/phiquant (else $XDG_CACHE_HOME/phiquant, else ~/.cache/phiquant).  Each
user of the cache owns one sub-directory, named here, so a reader can see everything phiquant keeps and
delete any part of it.  Entries are keyed by `fingerprint`, which reads what a model *is* (file names,
sizes, headers and sampled bytes), not when it was touched: a re-download or re-conversion of the same
bytes hits, while an edited or different model misses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

CACHE_ENV = "PHIQUANT_CACHE"

# The sub-caches: what each holds.
CONVERTED = "converted"  # Hugging Face checkpoints converted to GGUF for the runtime (as_gguf)
IMATRIX = "imatrix"  # `--imatrix auto`: importance matrices over the bundled calibration text
BUDGET = "budget"  # `--max-size`/`--target-bpw`: each model's measured sensitivity profile
REFERENCE = "reference"  # evaluation: the reference model's hidden states per text and context
RUNTIME_PROBE = "runtime-probe"  # loading: which CPU buffer types this machine survives

HEADER_BYTES = 64 * 1024  # read whole: config files, safetensors and GGUF headers of small models
SAMPLES_PER_REGION = 8
SAMPLE_BYTES = 4096


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "phiquant" if base else Path.home() / ".cache" / "phiquant"


def sub_cache(name: str) -> Path:
    """The directory of one named sub-cache (not created)."""
    return cache_root() / name


def fingerprint(
    path: str | Path, *, header_bytes: int = HEADER_BYTES, regions: Sequence[tuple[int, int]] = ()
) -> str:
    """A digest of what `path` holds: for a file, or every file under a directory (by relative name),
    its size, its first `header_bytes` and SAMPLES_PER_REGION evenly spaced 4 KiB samples of each
    (offset, length) region (default: the whole file).  A GGUF's caller passes its header length and its
    tensors as regions, so every tensor is sampled.  A file's own name is not part of it: a renamed copy
    is the same model."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\n".encode())
        with file.open("rb") as f:
            digest.update(f.read(header_bytes))
            for offset in _sample_offsets(regions or [(0, size)]):
                f.seek(offset)
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def _sample_offsets(regions: Iterable[tuple[int, int]]) -> list[int]:
    offsets = []
    for start, length in regions:
        span = max(length - SAMPLE_BYTES, 0)
        offsets += [start + span * k // (SAMPLES_PER_REGION - 1) for k in range(SAMPLES_PER_REGION)]
    return offsets


def cache_key(*parts: object) -> str:
    """One short key from several: a fingerprint and what else the cached result depends on."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]
