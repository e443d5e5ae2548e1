"""What the runtime loads: a GGUF file, and what the user named to get it.

A Hugging Face directory is converted before it reaches the runtime (phiquant.workflows.as_gguf, which
`phiquant.load` and the chat, generate and serve commands go through).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phiquant.errors import PhiquantError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelFile:
    gguf: Path
    source: Path  # what the user named
    converted: bool = False  # True when `gguf` was made from a Hugging Face directory (now or earlier)
    cache_hit: bool = False


def gguf_model_file(path: str | Path) -> ModelFile:
    """A GGUF file the user named, checked to be one."""
    path = Path(path)
    if path.is_dir():
        raise PhiquantError(
            "a Hugging Face directory must be converted first (phiquant.load does it)", path=path
        )
    if not path.exists():
        raise PhiquantError("no such file or directory", path=path)
    if not _is_gguf(path):
        raise PhiquantError("not a GGUF file or a Hugging Face model directory", path=path)
    return ModelFile(gguf=path, source=path)


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as error:
        raise PhiquantError(f"cannot read the model: {error.strerror}", path=path) from None
