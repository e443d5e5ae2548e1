"""The suite's own temporary-folder plugin (tests/temporary_folders.py), run on a small generated suite in
a child pytest: a module fixture's folder goes when its module ends, while a session cache's folder,
first made from inside that module fixture, lasts to the end of the run."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

CONFTEST = """
import pytest
from tests.temporary_folders import NumberedFolders, TemporaryFolders

def pytest_configure(config):
    config.pluginmanager.register(TemporaryFolders(), "temporary-folders")

@pytest.fixture(scope="session")
def session_folders(tmp_path_factory):
    return NumberedFolders(tmp_path_factory.mktemp("session"))

@pytest.fixture(scope="session")
def cache(session_folders):
    made = {}
    def get(name):
        if name not in made:
            made[name] = session_folders.mktemp(name)
            (made[name] / "data").write_text(name)
        return made[name]
    return get
"""

FIRST_MODULE = """
import pytest

@pytest.fixture(scope="module")
def module_data(tmp_path_factory, cache):
    folder = tmp_path_factory.mktemp("module-data")
    (folder / "data").write_text("x")
    return folder, cache("shared")

def test_writes_where_the_next_module_looks(module_data, tmp_path_factory):
    folder, shared = module_data
    (tmp_path_factory.getbasetemp() / "seen.txt").write_text(f"{folder}\\n{shared}")
"""

SECOND_MODULE = """
from pathlib import Path

def test_the_first_modules_folder_is_gone_and_the_cache_stays(tmp_path_factory, cache):
    folder, shared = (tmp_path_factory.getbasetemp() / "seen.txt").read_text().splitlines()
    assert not Path(folder).exists()
    assert Path(shared).is_dir()
    assert cache("shared") == Path(shared)
    assert (Path(shared) / "data").read_text() == "shared"
"""


@pytest.mark.slow
def test_module_fixture_folders_go_with_their_module_and_session_caches_last(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, text in {
        "conftest.py": CONFTEST,
        "test_1_first.py": FIRST_MODULE,
        "test_2_second.py": SECOND_MODULE,
    }.items():
        (suite / name).write_text(textwrap.dedent(text))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-p",
            "no:randomly",
        ]
        + ["--basetemp", str(tmp_path / "base"), "--rootdir", str(suite), str(suite)],
        capture_output=True,
        text=True,
        cwd=suite,
        env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert not any((tmp_path / "base").glob("module-data*"))
