"""Keeps the run's temporary files to what the running tests need.

Kept whole, one run's temporary files add up to tens of GB (every checkpoint, converted and quantized
file of every test), more than a CI machine may have free.  A passing test's tmp_path goes when the
test ends (tmp_path_retention_policy in pyproject.toml); this plugin removes a folder that a module-
or session-scoped fixture made with tmp_path_factory when that fixture ends.  Caches that fill when
first asked (`converted_gguf(spec, "f16")`, perhaps from inside another module's fixture) make their
folders with the `session_folders` or `module_folders` fixture instead, inside a folder that the
session or the module owns, so they last as long as the cache.

Registered from tests/conftest.py as a plugin rather than written as conftest hooks: conftest hooks
apply only to the nodes below their folder, and session-scoped fixtures belong to the session."""

import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest


class NumberedFolders:
    """tmp_path_factory.mktemp's numbered folders, made inside one folder that a session- or
    module-scoped fixture owns, so they last as long as that fixture whenever they are made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, int] = {}

    def mktemp(self, basename: str) -> Path:
        number = self.made.get(basename, 0)
        self.made[basename] = number + 1
        folder = self.root / f"{basename}{number}"
        folder.mkdir()
        return folder


class TemporaryFolders:
    """Within one process (each xdist worker has its own base folder), fixtures are set up one at a
    time, so a folder that appears in the base folder while a fixture is set up, and that no fixture
    set up inside it claimed first, is that fixture's."""

    def __init__(self) -> None:
        self.factory: pytest.TempPathFactory | None = None
        self.claimed: set[Path] = set()
        self.of_fixture: dict[int, list[Path]] = {}
        self.free_at_start = 0

    def folders(self) -> set[Path]:
        if self.factory is None:
            return set()
        return {path for path in self.factory.getbasetemp().iterdir() if not path.is_symlink()}

    def remove(self, folders: list[Path]) -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
            self.claimed.discard(folder)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[object]) -> Generator[None, object, object]:
        if fixturedef.scope == "function":
            return (yield)
        before = self.folders()
        try:
            result = yield
        finally:
            made = sorted(self.folders() - before - self.claimed)
            self.claimed.update(made)
            self.of_fixture[id(fixturedef)] = made
        if fixturedef.argname == "tmp_path_factory":
            assert isinstance(result, pytest.TempPathFactory)
            self.factory = result
        return result

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[object]) -> None:
        self.remove(self.of_fixture.pop(id(fixturedef), []))

    def pytest_sessionstart(self) -> None:
        self.free_at_start = shutil.disk_usage(tempfile.gettempdir()).free

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Printed even with -q: a run that fails for want of disk says so in its log."""
        free = shutil.disk_usage(tempfile.gettempdir()).free
        terminalreporter.write_line(
            f"free disk for temporary files: {self.free_at_start / 2**30:.1f} GiB at the start, "
            f"{free / 2**30:.1f} GiB at the end"
        )
