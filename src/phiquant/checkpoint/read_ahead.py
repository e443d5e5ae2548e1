"""Asking the kernel to read a byte range ahead, so tensor reads do not wait on the disk.

The writer encodes slabs for a while before it reads the next ones; a slab read through a fresh memory
map otherwise faults its pages in synchronously, a readahead window at a time, with both cores idle.
A WILLNEED hint for the slabs queued next makes the disk fill the page cache while the cores encode.
It is only a hint: where the platform has no posix_fadvise, or the call fails, nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_ahead(path: Path, offset: int, length: int) -> None:
    """Start reading [offset, offset + length) of `path` into the page cache, without waiting."""
    if length <= 0 or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # the read itself will name the problem
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
