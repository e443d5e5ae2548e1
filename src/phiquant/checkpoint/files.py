"""Which files of a downloaded checkpoint phiquant will open: regular files inside the checkpoint.

A checkpoint is a folder from a stranger.  A symbolic link in it (`model-00001.safetensors ->
~/.ssh/id_rsa`, `tokenizer.json -> /dev/zero`) would make phiquant read a file the user never
meant to hand over, or block forever on a FIFO or device.  So a file is opened only when it
resolves to a regular file inside the checkpoint folder, with one exception: the Hugging Face hub
cache stores every file of `<repo>/snapshots/<revision>/` as a link to `<repo>/blobs/<hash>`, so
inside a snapshot folder links may lead anywhere within that repository's cache folder.
"""

from __future__ import annotations

import stat
from pathlib import Path

from phiquant.errors import PhiquantError

# Far above any real config or tokenizer file (the largest tokenizer.json on the Hub is about
# 35 MB); parsed JSON takes many times its text's size in memory, so a crafted one stays bounded.
MAX_JSON_BYTES = 64 * 1024 * 1024

HUB_SNAPSHOTS = "snapshots"


def directory_root(directory: Path) -> Path:
    """The folder a checkpoint's links may lead into: the checkpoint itself, or for a Hugging Face
    hub cache snapshot, the repository's cache folder that holds `blobs/`."""
    resolved = directory.resolve()
    if resolved.parent.name == HUB_SNAPSHOTS and (resolved.parent.parent / "blobs").is_dir():
        return resolved.parent.parent
    return resolved


def contained_file(directory: Path, name: str, root: Path | None = None) -> Path | None:
    """`directory / name` if it is a regular file whose real path stays under the checkpoint's
    root; None if there is no such entry; PhiquantError if it leads outside or is not a file."""
    path = directory / name
    try:
        if not path.exists() and not path.is_symlink():
            return None
        target = path.resolve(strict=True)
        mode = target.stat().st_mode
    except (OSError, RuntimeError) as exc:  # a dangling link or a loop of links
        raise PhiquantError(f"is a broken or looping link ({exc.__class__.__name__})", path=path) from None
    except ValueError:  # a NUL byte in a name read from an index file
        raise PhiquantError("is not a valid file name", path=path) from None
    root = root or directory_root(directory)
    if not target.is_relative_to(root):
        raise PhiquantError(
            f"is a link to {target}, outside the checkpoint; phiquant only follows links that stay inside "
            "it (copy the file in if you trust it)",
            path=path,
        )
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        raise PhiquantError("is not a regular file (a device, FIFO or socket)", path=path)
    return path
