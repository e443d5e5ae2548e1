"""`phiquant batch` with its output in an object store, against a real S3-protocol peer: moto's S3 server
on loopback, read back with boto3 (its own client, not our fsspec code).  Skipped where the storage
extra or moto is not installed; the matrix run also needs Ray (the cluster extra)."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phiquant import api
from phiquant.errors import EXIT_BAD_INPUT, PhiquantError
from phiquant.workflows.batch import ladder_task
from phiquant.workflows.batch_jobs import ModelJob
from tests.cli.run import run_phiquant
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.phi3_specs import PHI3_MINI_4K

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
TYPES = ["Q8_0", "Q4_0"]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A boto3 client on the server, with the environment pointing phiquant (and its workers) at it."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "phiquant-test",
        "AWS_SECRET_ACCESS_KEY": "phiquant-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PHIQUANT_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def _bucket(s3: Any) -> str:
    name = f"phiquant-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _objects(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed
    }


def _jobs(tmp_path: Path, output: str, source: Path) -> Path:
    jobs = tmp_path / f"jobs-{uuid.uuid4().hex[:6]}.toml"
    jobs.write_text(
        f'output = "{output}"\n[eval]\nctx = 32\nmax_windows = 2\n[defaults]\ntypes = {json.dumps(TYPES)}\n'
        f'[[models]]\nsource = "{source}"\nname = "mini"\n'
    )
    return jobs


@pytest.mark.slow
def test_batch_to_s3_writes_the_local_runs_bytes_and_a_rerun_skips_them(
    s3: Any, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    source = shared_phi3_checkpoint(PHI3_MINI_4K)
    bucket = _bucket(s3)
    local = run_phiquant("batch", _jobs(tmp_path, "local", source), "--json")
    assert local.returncode == 0, local.stderr[-3000:]
    remote = run_phiquant("batch", _jobs(tmp_path, f"s3://{bucket}/run", source), "--json")
    assert remote.returncode == 0, remote.stderr[-3000:]
    [outcome] = json.loads(remote.stdout)["models"]
    assert outcome["status"] == "done" and outcome["reference_reused"] is True

    stored = _objects(s3, bucket, "run/mini/")
    written = {p.name: p.read_bytes() for p in (tmp_path / "local" / "mini").iterdir() if p.is_file()}
    written = {name: data for name, data in written.items() if not name.startswith(".")}
    assert set(stored) == set(written)  # no temporary key left behind, nothing missing
    stage = tmp_path / "cache" / "phiquant" / "batch-stage"
    assert not [p for p in stage.rglob("*") if p.is_file()]  # the staged copies went once uploaded
    ggufs = [name for name in written if name.endswith(".gguf")]
    assert len(ggufs) == 1 + len(TYPES)  # the F16 reference and the ladder
    for name in [*ggufs, outcome["card"]]:
        assert stored[name] == written[name], name
    manifest, local_manifest = (json.loads(m["phiquant-batch.json"]) for m in (stored, written))
    for key in ("job", "files", "finished_for", "outputs"):
        assert manifest[key] == local_manifest[key], key
    report, local_report = (json.loads(m[outcome["report"]]) for m in (stored, written))
    assert report["recommendation"] == local_report["recommendation"]
    assert report["recommended"] == Path(local_report["recommended"]).name  # beside the report, not staged
    assert [(Path(f["path"]).name, f["divergence"]) for f in report["evaluation"]["files"]] == [
        (Path(f["path"]).name, f["divergence"]) for f in local_report["evaluation"]["files"]
    ]

    modified = {
        o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="run/")["Contents"]
    }
    rerun = run_phiquant("batch", _jobs(tmp_path, f"s3://{bucket}/run", source), "--json")
    assert [m["status"] for m in json.loads(rerun.stdout)["models"]] == ["skipped"], rerun.stderr[-2000:]
    after = {
        o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="run/")["Contents"]
    }
    assert after == modified  # nothing rewritten


def test_a_deleted_corrupted_or_unrecorded_object_is_redone_from_any_machine(
    s3: Any, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = ModelJob("mini", str(shared_phi3_checkpoint(PHI3_MINI_4K)), tuple(TYPES))
    bucket = _bucket(s3)
    url = f"s3://{bucket}/run/mini"
    first = ladder_task(job, url, False, 1)
    assert first["skipped"] is False
    good = _objects(s3, bucket, "run/mini/")
    names = [f["path"] for f in first["files"]]
    assert sorted(good) == sorted([*names, "phiquant-batch.json"])

    def rerun_elsewhere(machine: str) -> dict[str, Any]:
        monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / machine))  # an empty stage: only the store
        return ladder_task(job, url, False, 1)

    assert rerun_elsewhere("b")["skipped"] is True
    corrupted = bytearray(good[names[0]])
    corrupted[-1] ^= 0xFF  # same size, other bytes
    s3.put_object(Bucket=bucket, Key=f"run/mini/{names[0]}", Body=bytes(corrupted))
    assert rerun_elsewhere("c")["skipped"] is False
    assert _objects(s3, bucket, "run/mini/") == good
    s3.delete_object(Bucket=bucket, Key=f"run/mini/{names[1]}")
    assert rerun_elsewhere("d")["skipped"] is False
    assert _objects(s3, bucket, "run/mini/") == good
    s3.delete_object(Bucket=bucket, Key="run/mini/phiquant-batch.json")  # objects there, unrecorded
    assert rerun_elsewhere("e")["skipped"] is False
    assert _objects(s3, bucket, "run/mini/") == good


@pytest.mark.parametrize("case", ["no such bucket", "unreachable store"])
def test_a_store_that_cannot_be_written_fails_in_one_line_naming_the_url(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    url = f"s3://phiquant-missing-{uuid.uuid4().hex[:8]}/run"
    if case == "unreachable store":
        url = f"s3://{_bucket(s3)}/run"
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: connection refused
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries only add seconds of backoff
    (tmp_path / "phi").mkdir()
    result = run_phiquant("batch", _jobs(tmp_path, url, tmp_path / "phi"))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"phiquant: error: {url}: cannot write to the store: ")
    if case == "unreachable store":
        assert "Could not connect" in line
    else:
        assert "bucket" in line.lower()


def test_a_url_without_the_storage_extra_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec raises ImportError
    (tmp_path / "phi").mkdir()
    with pytest.raises(PhiquantError, match=r"^s3://bucket/run: .*phiquant\[storage\]"):
        api.batch(_jobs(tmp_path, "s3://bucket/run", tmp_path / "phi"))
