"""The jobs file and the manifest that makes reruns skip work (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant.errors import PhiquantError
from phiquant.workflows.batch_jobs import (
    ModelJob,
    job_record,
    read_jobs,
    recorded_files_verify,
    write_manifest,
)
from phiquant.workflows.batch_store import Store, sha256_of


def test_models_inherit_defaults_and_paths_are_relative_to_the_jobs_file(tmp_path: Path) -> None:
    (tmp_path / "phi").mkdir()
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        'output = "out"\n[eval]\nctx = 64\nmax_windows = 2\n[defaults]\ntypes = ["Q4_K_M"]\nimatrix = "auto"\n'
        '[[models]]\nsource = "phi"\n[[models]]\nsource = "microsoft/Phi-4-mini-instruct"\ntypes = ["Q8_0"]\n'
        'split_max_size = "48G"\n'
    )
    jobs = read_jobs(jobs_file)
    assert jobs.output == str(tmp_path / "out") and jobs.evaluate
    assert (jobs.eval_options.ctx, jobs.eval_options.max_windows, jobs.eval_options.speed_runs) == (64, 2, 0)
    local, hub = jobs.models
    assert (local.name, local.source, local.types, local.imatrix) == (
        "phi",
        str(tmp_path / "phi"),
        ("Q4_K_M",),
        "auto",
    )
    assert (hub.name, hub.source, hub.types, hub.split_max_size) == (
        "Phi-4-mini-instruct",
        "microsoft/Phi-4-mini-instruct",
        ("Q8_0",),
        "48G",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("output = 1\n", "[[models]]"),
        ('[[models]]\ntypes = ["Q8_0"]\n', "needs a source"),
        ('[[models]]\nsource = "a"\n', "types must be a list"),
        ('[[models]]\nsource = "a"\ntypes = ["Q8_0"]\ncolour = 1\n', "unknown model setting 'colour'"),
        (
            '[[models]]\nsource = "a/x"\ntypes = ["Q8_0"]\n[[models]]\nsource = "b/x"\ntypes = ["Q8_0"]\n',
            "share",
        ),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_bad_jobs_files_are_refused_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(text)
    with pytest.raises(PhiquantError) as raised:
        read_jobs(jobs_file)
    assert problem in str(raised.value) and str(jobs_file) in str(raised.value)


def test_recorded_files_verify_only_when_size_and_checksum_match(tmp_path: Path) -> None:
    job = ModelJob("m", "src", ("Q8_0",))
    file = tmp_path / "m-Q8_0.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    entry = {
        "type": "Q8_0",
        "path": file.name,
        "shards": [{"name": file.name, "size": 64, "sha256": sha256_of(file)}],
    }
    store = Store(str(tmp_path))
    write_manifest(store, {"job": job_record(job), "files": [entry]})
    assert recorded_files_verify(store, job) == [entry]
    assert recorded_files_verify(store, ModelJob("m", "src", ("Q4_0",))) is None  # another job
    file.write_bytes(b"GGUF" + bytes(59) + b"\1")  # same size, other bytes
    assert recorded_files_verify(store, job) is None
    file.unlink()
    assert recorded_files_verify(store, job) is None
