"""`phiquant batch` on a local Ray cluster of two nodes (Ray's own multi-node harness: a head and a second
raylet with its own resources, the processes `ray start` runs), with a worker killed mid-ladder, a bad
model in the matrix, and a rerun.  Skipped where Ray is not installed (it is the optional `cluster` extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phiquant import api
from phiquant.errors import EXIT_SOME_FAILED
from tests.cli.run import cli_environment
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K, PHI3_MINI_4K, PHI35_MINI

ray = pytest.importorskip("ray")
TYPES = ["Q8_0", "Q4_0", "Q4_K_M"]


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"second_node": 1})
    try:
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def _ladder_workers() -> list[int]:
    """Ray worker processes running a ladder task (Ray titles them after the task)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::ladder_task"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_matrix_on_two_nodes_survives_a_killed_worker_isolates_a_bad_model_and_resumes(
    two_node_cluster: str, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    sources = {
        spec.name_or_path: shared_phi3_checkpoint(spec) for spec in (PHI35_MINI, PHI3_MINI_4K, PHI3_MEDIUM_4K)
    }
    broken = tmp_path / "not-phi"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    models = "".join(f'[[models]]\nsource = "{path}"\nname = "{name}"\n' for name, path in sources.items())
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f'output = "out"\n[eval]\nctx = 32\nmax_windows = 2\n[defaults]\ntypes = {json.dumps(TYPES)}\n'
        f'{models}[[models]]\nsource = "{broken}"\n'
    )
    env = cli_environment() | {"PHIQUANT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "phiquant", "batch", str(jobs), "--address", two_node_cluster, "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        workers = _ladder_workers()
        if workers:
            time.sleep(0.5)  # mid-task: the ladder has started writing
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.1)
    stdout, stderr = process.communicate(timeout=900)
    assert killed is not None, "no ladder task was seen running"
    summary = json.loads(stdout)
    outcomes = {model["name"]: model for model in summary["models"]}
    # The bad model fails alone, with its reason; the exit status says a model failed.
    assert process.returncode == EXIT_SOME_FAILED, stderr
    assert outcomes["not-phi"]["status"] == "failed" and "ladder:" in outcomes["not-phi"]["reason"]
    for name, source in sources.items():
        outcome = outcomes[name]
        assert outcome["status"] == "done", (name, outcome["reason"], stderr[-2000:])
        assert outcome["reference_reused"] is True  # every file's evaluation read the shared reference logits
        folder = tmp_path / "out" / name
        assert (folder / outcome["card"]).is_file() and (folder / outcome["report"]).is_file()
        # Byte-identical to the same ladder run with `phiquant quantize` on its own.
        alone = api.quantize(source, ["F16", *TYPES], tmp_path / "alone" / name)
        assert [f["path"] for f in outcome["files"]] == [f.path.name for f in alone.files]
        for file in alone.files:
            assert (folder / file.path.name).read_bytes() == file.path.read_bytes(), file.path.name
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    statuses = {m["name"]: m["status"] for m in json.loads(rerun.stdout)["models"]}
    assert statuses == {**{name: "skipped" for name in sources}, "not-phi": "failed"}
