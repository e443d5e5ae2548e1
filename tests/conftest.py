"""Test-wide fixtures: the checkpoint factory's pytest fixtures (tests/fixtures/checkpoint_fixtures.py),
and a cache of the run's own, so no test reads or writes the user's (~/.cache/phiquant)."""

import os
from collections.abc import Iterator

import pytest

from tests.fixtures.bpe_fixtures import (  # noqa: E402,F401
    bpe_vocab_cache,
    converted_bpe_gguf,
    make_bpe_checkpoint,
    shared_bpe_checkpoint,
)
from tests.fixtures.checkpoint_fixtures import (  # noqa: F401  (imported fixtures register by name)
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
