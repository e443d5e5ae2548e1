"""Test-wide fixtures: the checkpoint factory's pytest fixtures (tests/fixtures/checkpoint_fixtures.py),
and a cache of the run's own, so no test reads or writes the user's (~/.cache/phiquant)."""

import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pin_worker_to_its_cores() -> None:
    """Each xdist worker gets its own share of the cores (as `taskset` would), inherited by the
    processes it starts: llama.cpp's threads meet at a spinning barrier after every operation, so two
    workers each running it on every core make those threads wait for one another's time slices.

    Done when this file loads, before the imports below load torch: OpenMP and OpenBLAS size their
    thread pools to the cores the process may use when they load, and a pool of two spinning threads
    on one core is several times slower than one thread."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker is None or count is None:
        return
    cores = sorted(os.sched_getaffinity(0))
    index, workers = int(worker.removeprefix("gw")), int(count)
    share = cores[index::workers] if len(cores) >= workers else [cores[index % len(cores)]]
    os.sched_setaffinity(0, share)
    if "torch" in sys.modules:  # loaded earlier by a plugin: its pool would keep its first size
        sys.modules["torch"].set_num_threads(len(share))


_pin_worker_to_its_cores()


from tests.fixtures.bpe_fixtures import (  # noqa: E402,F401
    bpe_vocab_cache,
    converted_bpe_gguf,
    make_bpe_checkpoint,
    shared_bpe_checkpoint,
)
from tests.fixtures.checkpoint_fixtures import (  # noqa: E402,F401  (imported fixtures register by name)
    make_phi3_checkpoint,
    phi3_checkpoint,
    phi3_medium_4k_checkpoint,
    phi3_mini_4k_checkpoint,
    phi3_mini_128k_april_2024_checkpoint,
    phi3_spec,
    phi3_vocab,
    phi35_mini_checkpoint,
    shared_phi3_checkpoint,
)
from tests.fixtures.gguf_fixtures import converted_gguf, split_f16, unsplit_f16  # noqa: E402,F401
from tests.fixtures.hub_cache import hub_cache, no_network  # noqa: E402,F401
from tests.fixtures.phi4mm_fixtures import converted_phi4mm_gguf, shared_phi4mm_checkpoint  # noqa: E402,F401
from tests.fixtures.phi4v_fixtures import converted_phi4v, phi4v_checkpoint  # noqa: E402,F401
from tests.fixtures.phimoe_fixtures import (  # noqa: E402,F401
    converted_phimoe_gguf,
    make_phimoe_checkpoint,
    shared_phimoe_checkpoint,
)
from tests.temporary_folders import NumberedFolders, TemporaryFolders  # noqa: E402

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a user at a terminal has.  A suite started in the background by a non-interactive shell
# (`pytest &`) inherits SIGINT ignored, and the interrupt tests would then test nothing.
HANDLERS_AT_START = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
for _signum, _handler in HANDLERS_AT_START.items():
    signal.signal(_signum, _handler)


def _put_back_signal_handlers(what: str) -> None:
    changed = [
        signal.Signals(n).name for n in HANDLED_SIGNALS if signal.getsignal(n) is not HANDLERS_AT_START[n]
    ]
    for signum, handler in HANDLERS_AT_START.items():
        signal.signal(signum, handler)
    if changed:
        warnings.warn(f"{what}: the {' and '.join(changed)} handler was left changed", stacklevel=2)


@pytest.fixture(autouse=True)
def signal_handlers_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with a terminal's SIGINT/SIGTERM handlers (tests send themselves signals, and
    an xdist worker runs many modules in one process).  Whatever changed them during the run is named
    in a warning: phiquant itself must always put them back."""
    _put_back_signal_handlers(f"before {request.node.nodeid}")
    yield
    _put_back_signal_handlers(f"by {request.node.nodeid}")


@pytest.fixture(scope="session")
def session_folders(tmp_path_factory: pytest.TempPathFactory) -> NumberedFolders:
    return NumberedFolders(tmp_path_factory.mktemp("session"))


@pytest.fixture(scope="module")
def module_folders(tmp_path_factory: pytest.TempPathFactory) -> NumberedFolders:
    return NumberedFolders(tmp_path_factory.mktemp("module"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """PHIQUANT_CACHE for the whole run: one folder, shared by the tests (what one test cached, such
    as a kernel probe's verdict, serves the next) and removed with the run's temporary files.  Tests
    that need an empty cache set their own on top."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PHIQUANT_CACHE", str(tmp_path_factory.mktemp("phiquant-cache")))
        yield


# The suite runs on pytest-xdist workers (addopts in pyproject.toml), one per core the process may use,
# at most four: many tests start llama.cpp with two threads of its own, and each worker holds torch.
# `--dist loadscope` keeps each module on one worker, so its module-scoped fixtures are built once.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TemporaryFolders(), "phiquant-temporary-folders")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with the most slow tests first (their order within kept), so that the workers' last
    modules are short ones and neither waits long for the other at the end."""
    slow_count: dict[Path, int] = {}
    for item in items:
        slow_count[item.path] = slow_count.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    position = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow_count[item.path], position[item.path]))
