"""Files and folders that must not outlive an interrupted command.

Every output is first written under a temporary name beside its destination and renamed into place
when complete.  A temporary path is registered here *before* it exists on disk, and registering,
creating, committing (fsync + rename) and removing all run with SIGINT and SIGTERM held back, so a
signal can only land between two such steps, never inside one.  Whatever the moment of the signal,
the set of registered paths is then exactly the set that may exist, and `remove_pending` (the CLI
calls it when interrupted) removes them and reports what it removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

PARTIAL_SUFFIX = ".phiquant-partial"
HELD_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

_lock = threading.RLock()
_pending: dict[Path, Path] = {}  # temporary path -> the destination it stands for (itself for folders)
_removed: list[Path] = []  # destinations whose unfinished files were removed since the last report


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM recorded instead of acted on; act on the first one after.

    Python runs signal handlers in the main thread only, so other threads need (and get) nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for signum in HELD_SIGNALS:
            previous[signum] = signal.signal(signum, lambda number, frame: caught.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            _deliver(caught[0], previous[caught[0]])


def _deliver(signum: int, handler: Any) -> None:
    """Act on a held signal as its own handler would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


@dataclass
class PartialFile:
    """An output being written: an open file under a temporary name, registered for removal."""

    temp_path: Path
    path: Path
    file: BinaryIO


def partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def create(path: Path) -> PartialFile:
    """Open a temporary file that will become `path`; it is registered before it exists."""
    temp_path = partial_name(path)
    with signals_held():
        _register(temp_path, path)
        try:
            file = open(temp_path, "wb")  # noqa: SIM115 - closed by commit() or discard()
        except BaseException:
            _unregister(temp_path)
            raise
    return PartialFile(temp_path, path, file)


def commit(files: Sequence[PartialFile]) -> None:
    """Flush, fsync and rename every file into place: all of them, with no signal in between, so an
    interrupted ladder never leaves some files complete and others missing."""
    with signals_held():
        for partial in files:
            partial.file.flush()
            os.fsync(partial.file.fileno())
            partial.file.close()
        for partial in files:
            os.replace(partial.temp_path, partial.path)
            _unregister(partial.temp_path)


def discard(partial: PartialFile) -> None:
    with signals_held():
        with contextlib.suppress(OSError):
            partial.file.close()
        _remove(partial.temp_path)


def abandon(temp_path: Path) -> None:
    """Remove a registered temporary file whose handle was lost (a signal landed between its creation
    and the caller receiving it); a path this process did not register is left alone."""
    with signals_held(), _lock:
        if temp_path in _pending:
            _remove(temp_path)


def write_bytes(path: Path, data: bytes) -> None:
    """`path` holds `data` or is untouched: never a truncated file, whatever interrupts the write."""
    write_with(path, lambda file: file.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file, then rename it to `path` (or remove it if `write` fails)."""
    partial = create(path)
    try:
        write(partial.file)
    except BaseException:
        discard(partial)
        raise
    try:
        commit([partial])
    except BaseException:
        discard(partial)
        raise


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """A scratch folder removed on exit, and by `remove_pending` if a signal cuts the exit short."""
    with signals_held():
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        _register(folder, folder)
    try:
        yield folder
    finally:
        with signals_held():
            _remove(folder, report=False)


def remove_pending() -> list[Path]:
    """Remove every registered temporary file or folder that exists; return the destinations whose
    unfinished files were removed since the last call (those removed on the way out included)."""
    with signals_held():
        for temp_path in list(_pending):
            _remove(temp_path)
        with _lock:
            removed = list(dict.fromkeys(_removed))
            _removed.clear()
    return removed


def forget_removed() -> None:
    with _lock:
        _removed.clear()


def _register(temp_path: Path, path: Path) -> None:
    with _lock:
        _pending[temp_path] = path


def _unregister(temp_path: Path) -> None:
    with _lock:
        _pending.pop(temp_path, None)


def _remove(temp_path: Path, *, report: bool = True) -> None:
    with _lock:
        destination = _pending.get(temp_path, temp_path)
        existed = temp_path.exists() or temp_path.is_symlink()
        if temp_path.is_dir() and not temp_path.is_symlink():
            shutil.rmtree(temp_path, ignore_errors=True)
            report = False  # scratch folders are not outputs
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
        _pending.pop(temp_path, None)
        if existed and report:
            _removed.append(destination)
