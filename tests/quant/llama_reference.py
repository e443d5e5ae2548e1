"""The oracle: llama.cpp's own llama_model_quantize, run through llama-cpp-python's ctypes binding.

Reference runs happen in a child process (this file run as a script), several jobs per process so that
ggml builds its IQ lookup tables once.  A GGML_ASSERT in llama.cpp aborts the child, not pytest: the
parent records the crash for the job that was running and starts a new child for the rest.

The child imports only the standard library, numpy and llama_cpp, never phiquant, so nothing of ours can
influence the reference output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# llama_model_kv_override_type (llama.h)
KV_INT, KV_FLOAT, KV_BOOL, KV_STR = 0, 1, 2, 3
GGML_TYPE_COUNT = 43


@dataclass(frozen=True)
class ReferenceJob:
    input_path: str
    output_path: str
    ftype: int
    output_type: int | None = None
    embedding_type: int | None = None
    pure: bool = False
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    tt_overrides: tuple[tuple[str, int], ...] = ()
    imatrix_path: str | None = None  # .npz: tensor name -> float32 weights
    kv_overrides: tuple[tuple[str, int, object], ...] = ()  # (key, KV_* tag, value)
    nthread: int = 2
    dry_run: bool = False  # types and sizes only, logged; no output file


@dataclass(frozen=True)
class ReferenceResult:
    job: ReferenceJob
    return_code: int | None  # llama_model_quantize's result; None when the process died
    signal: int | None = None  # the signal that killed the process (6 = abort)
    log: str = field(default="", repr=False)
    seconds: float = 0.0  # time llama_model_quantize took

    @property
    def succeeded(self) -> bool:
        return self.return_code == 0


def run_reference_jobs(jobs: list[ReferenceJob], timeout: float = 1800) -> list[ReferenceResult]:
    """Run every job; a job that aborts the process is reported with its signal and the rest go on."""
    results: list[ReferenceResult] = []
    pending = list(jobs)
    while pending:
        finished = _run_batch(pending, timeout)
        results.extend(finished)
        pending = pending[len(finished) :]
    return results


def _run_batch(jobs: list[ReferenceJob], timeout: float) -> list[ReferenceResult]:
    with tempfile.TemporaryDirectory(prefix="llama-ref-") as scratch:
        jobs_file, results_file = Path(scratch) / "jobs.json", Path(scratch) / "results.jsonl"
        jobs_file.write_text(json.dumps([asdict(job) for job in jobs]))
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        process = subprocess.run(
            [sys.executable, __file__, str(jobs_file), str(results_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        lines = results_file.read_text().splitlines() if results_file.exists() else []
        logs = process.stderr.split("\n=== job ")
        records = [json.loads(line) for line in lines]
        finished = [
            ReferenceResult(job, record["rc"], None, _log_for(logs, index), record["seconds"])
            for index, (job, record) in enumerate(zip(jobs, records, strict=False))
        ]
        if len(finished) < len(jobs):
            if process.returncode >= 0:
                raise RuntimeError(f"reference child exited with {process.returncode}:\n{process.stderr}")
            finished.append(
                ReferenceResult(jobs[len(finished)], None, -process.returncode, _log_for(logs, len(finished)))
            )
        return finished


def _log_for(logs: list[str], index: int) -> str:
    return logs[index + 1] if index + 1 < len(logs) else ""


# A dry run logs one line per tensor: "[  1/ 53] name - [shape], type = f32, size = ... (q6_K)";
# the parenthesised target type is there only when the tensor is converted.
_DRY_RUN_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\] (\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^\n(]*(?:\((\S+)\))?"
)


def dry_run_types(log: str) -> list[tuple[str, str]]:
    """(tensor name, ggml type name) in processing order, from a dry run's log."""
    return [(name, target or source) for name, source, target in _DRY_RUN_LINE.findall(log)]


# ---- child side -------------------------------------------------------------------------------------


def _quantize_one(job: dict) -> int:
    import ctypes

    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = job["nthread"]
    params.ftype = job["ftype"]
    params.output_tensor_type = GGML_TYPE_COUNT if job["output_type"] is None else job["output_type"]
    params.token_embedding_type = GGML_TYPE_COUNT if job["embedding_type"] is None else job["embedding_type"]
    params.pure = job["pure"]
    params.allow_requantize = job["allow_requantize"]
    params.quantize_output_tensor = not job["leave_output_tensor"]
    params.dry_run = job["dry_run"]
    keep_alive: list[object] = []

    if job["imatrix_path"] is not None:
        with np.load(job["imatrix_path"]) as archive:
            entries = {name: np.ascontiguousarray(archive[name], dtype=np.float32) for name in archive.files}
        array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for slot, (name, values) in zip(array, entries.items(), strict=False):
            slot.name = name.encode()
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            slot.size = values.size
        array[len(entries)].name = None
        keep_alive += [entries, array]
        params.imatrix = array

    if job["tt_overrides"]:
        overrides = (llama_cpp.llama_model_tensor_override * (len(job["tt_overrides"]) + 1))()
        for slot, (pattern, ggml_type) in zip(overrides, job["tt_overrides"], strict=False):
            slot.pattern = pattern.encode()
            slot.type = ggml_type
        overrides[len(job["tt_overrides"])].pattern = None
        overrides[len(job["tt_overrides"])].type = GGML_TYPE_COUNT
        keep_alive.append(overrides)
        params.tt_overrides = overrides

    if job["kv_overrides"]:
        kvs = (llama_cpp.llama_model_kv_override * (len(job["kv_overrides"]) + 1))()
        for slot, (key, tag, value) in zip(kvs, job["kv_overrides"], strict=False):
            slot.key = key.encode()
            slot.tag = tag
            if tag == KV_INT:
                slot.value.val_i64 = value
            elif tag == KV_FLOAT:
                slot.value.val_f64 = value
            elif tag == KV_BOOL:
                slot.value.val_bool = value
            else:
                slot.value.val_str = value.encode()
        kvs[len(job["kv_overrides"])].key = b""
        keep_alive.append(kvs)
        params.kv_overrides = kvs

    return llama_cpp.llama_model_quantize(
        job["input_path"].encode(), job["output_path"].encode(), ctypes.byref(params)
    )


def _child_main(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    with open(results_file, "w") as results:
        for index, job in enumerate(jobs):
            sys.stderr.write(f"\n=== job {index}\n")
            sys.stderr.flush()
            started = time.perf_counter()
            rc = _quantize_one(job)
            results.write(json.dumps({"rc": rc, "seconds": time.perf_counter() - started}) + "\n")
            results.flush()


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
