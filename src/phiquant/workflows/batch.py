"""`phiquant batch`: a matrix of models x quantization ladders, run on Ray (the optional `cluster` extra).

Ray is the engine, not a dependency of the rest of phiquant: by default an embedded local Ray is started
for the run on this machine, `address` joins an existing cluster.  The tasks:

- a model's ladder (its reference file and every type, one read of the source, the imatrix computed once
  in it when asked for) is one task;
- the reference file's own evaluation is one task: it computes the reference logits and stores them in
  phiquant's reference cache (PHIQUANT_CACHE), which each file's evaluation task, run after it, reads
  instead of recomputing (where the cache is node-local, an evaluation on another node computes them
  again: workflows.batch_store says why they are not uploaded);
- each other file's evaluation is its own task; the report and card of a model, one more.

A worker that dies is retried by Ray (`retries`); a task that raises is not, and its model is reported
failed with the reason while the others go on.  Outputs are written atomically and recorded with their
checksums (workflows.batch_jobs), so a rerun skips what is done.  Outputs go to a folder every worker
sees or to an object store URL (workflows.batch_store: staged on the worker, uploaded, then recorded).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.progress import SILENT, Reporter
from phiquant.workflows.batch_jobs import (
    MANIFEST,
    BatchJobs,
    ModelJob,
    finished,
    job_record,
    read_manifest,
    recorded_files_verify,
    write_manifest,
)
from phiquant.workflows.batch_store import Store, sha256_of


@dataclass
class ModelOutcome:
    name: str
    source: str
    status: str = "pending"  # done | skipped | failed
    reason: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    card: str | None = None
    reference_reused: bool | None = None  # every file's evaluation read the shared reference logits
    task_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchSummary:
    output: str
    address: str
    models: list[ModelOutcome]
    seconds: float

    @property
    def failed(self) -> list[ModelOutcome]:
        return [m for m in self.models if m.status == "failed"]


# Tasks (run on Ray workers) ------------------------------------------------------------------------


def ladder_task(job: ModelJob, directory: str, evaluate: bool, threads: int) -> dict[str, Any]:
    """Write (or find already written and verified) the model's files."""
    started = time.perf_counter()
    store = Store(directory)
    folder = store.stage()
    folder.mkdir(parents=True, exist_ok=True)
    files = recorded_files_verify(store, job)
    if files is not None:
        return {
            "files": files,
            "skipped": True,
            "finished": finished(store, files, evaluate),
            "seconds": 0.0,
        }
    from phiquant.gguf_io.split import SplitLimits, parse_split_size
    from phiquant.hub import resolve_source
    from phiquant.quant.plan import QuantOptions
    from phiquant.quant.types import parse_preset
    from phiquant.workflows.job import attach_imatrix, default_file_name, open_source, plan_files, write_files

    source = resolve_source(job.source)
    names = list(dict.fromkeys(([job.reference] if evaluate else []) + list(job.types)))
    presets = [parse_preset(name) for name in names]
    opened = open_source(source)
    imatrix: str | Path | None = job.imatrix
    if imatrix == "auto":
        from phiquant.workflows.imatrix import auto_imatrix

        imatrix = auto_imatrix(source, [p.name for p in presets], False)
    if imatrix is not None:
        attach_imatrix(opened, imatrix)
    split = None
    if job.split_max_size is not None or job.split_max_tensors is not None:
        size = parse_split_size(job.split_max_size) if job.split_max_size else None
        split = SplitLimits(size, job.split_max_tensors)
    paths = [folder / default_file_name(opened.name, preset) for preset in presets]
    options = QuantOptions(has_imatrix=opened.imatrix is not None)
    planned = plan_files(opened, [p.name for p in presets], paths, options, imatrix, split=split)
    write_files(opened, planned, threads=threads)
    files = [
        {
            "type": p.preset.name,
            "path": p.path.name,
            "shards": [{"name": s.name, "size": s.stat().st_size, "sha256": sha256_of(s)} for s in p.paths],
        }
        for p in planned
    ]
    for p in planned:
        for shard in p.paths:
            store.upload(shard)
    # Recorded only once every file is in place: an unrecorded object is redone by the next run.
    write_manifest(store, {"job": job_record(job), "files": files})
    return {"files": files, "skipped": False, "finished": False, "seconds": time.perf_counter() - started}


def evaluate_task(
    directory: str,
    file: dict[str, Any],
    reference: dict[str, Any],
    text: str | None,
    options: Any,
    threads: int,
    _after: object = None,
) -> Any:
    """One file's evaluation against the reference (both staged on this node first when the output is
    an object store); `_after` makes Ray run it once the reference task has filled the reference cache."""
    from dataclasses import replace

    from phiquant.bundled import heldout_text_path
    from phiquant.evaluate.evaluation import evaluate_files

    return evaluate_files(
        [_staged(Store(directory), file)],
        reference=_staged(Store(directory), reference),
        text=text or heldout_text_path(),
        options=replace(options, threads=threads),
    )


def finish_task(
    job: ModelJob, directory: str, files: list[dict[str, Any]], evaluations: list[Any]
) -> dict[str, Any]:
    """The model's report (from the per-file evaluations) and card; recorded in the manifest."""
    from dataclasses import replace

    from phiquant.integrations.card import build_card, write_card

    started = time.perf_counter()
    store = Store(directory)
    folder = store.stage()
    for entry in files:  # the card reads every file
        _staged(store, entry)
    before = _modified(folder)
    outputs: dict[str, str] = {}
    if evaluations:
        from phiquant.evaluate.report import build_report, write_report

        reference, others = evaluations[0], evaluations[1:]
        merged = replace(
            reference,
            files=[*reference.files, *(e.files[0] for e in others)],
            seconds=sum(e.seconds for e in evaluations),
            reference_from_cache=all(e.reference_from_cache for e in others),
        )
        if store.remote:  # the staged paths are this node's: the report names files beside it instead
            merged = replace(
                merged,
                files=[replace(f, path=Path(f.path.name)) for f in merged.files],
                reference=Path(merged.reference.name) if merged.reference else None,
            )
        report = write_report(build_report(merged, model=job.name), folder, plot=_can_plot())
        outputs["report"] = Path(str(report.json_path)).name
    card = write_card(build_card(folder, base_model=job.base_model))
    outputs["card"] = Path(str(card.path)).name
    for name, stamp in _modified(folder).items():
        if before.get(name) != stamp:
            store.upload(folder / name)
    manifest = read_manifest(store)
    manifest["outputs"] = outputs
    manifest["finished_for"] = sorted(s["sha256"] for f in files for s in f["shards"])
    write_manifest(store, manifest)
    store.clear_stage()
    return {**outputs, "seconds": time.perf_counter() - started}


def _staged(store: Store, entry: dict[str, Any]) -> str:
    """The local path of a recorded file (its first shard), every shard staged on this node."""
    paths = [store.fetch(s["name"], s["size"], s["sha256"]) for s in entry["shards"]]
    return str(paths[0].with_name(entry["path"]))


def _modified(folder: Path) -> dict[str, int]:
    """Each finished file's modification time: what a task wrote is what changed."""
    return {
        p.name: p.stat().st_mtime_ns
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
    }


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# The driver ---------------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PhiquantError("phiquant batch runs on Ray: pip install 'phiquant[cluster]'") from None
    return ray


def run_batch(
    jobs: BatchJobs,
    *,
    address: str | None = None,
    cpus_per_task: int = 1,
    retries: int = 3,
    reporter: Reporter = SILENT,
) -> BatchSummary:
    started = time.perf_counter()
    Store(jobs.output).check()  # a bad URL or missing credentials: one line, before Ray starts
    ray = import_ray()
    # Ray's driver prints worker deaths and task errors on stdout; phiquant's stdout is its result
    # (--json), so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        return _run_on_ray(ray, jobs, address, cpus_per_task, retries, reporter, started)


def _run_on_ray(
    ray: Any,
    jobs: BatchJobs,
    address: str | None,
    cpus_per_task: int,
    retries: int,
    reporter: Reporter,
    started: float,
) -> BatchSummary:
    owns_ray = not ray.is_initialized()
    if owns_ray:
        package_root = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {"PYTHONPATH": python_path}
        for variable in ("PHIQUANT_CACHE", "HF_HUB_CACHE", "HF_HOME", "PHIQUANT_EXTRA_BUFTS"):
            if os.environ.get(variable):
                env[variable] = os.environ[variable]
        ray.init(
            # "local": a Ray of its own even where another local cluster runs (None would join the one
            # started last on this machine, whose workers have another environment)
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": env},
        )
    try:
        return _Driver(ray, jobs, cpus_per_task, retries, reporter).run(address or "local", started)
    finally:
        if owns_ray:
            ray.shutdown()


class _Driver:
    """Submits each model's tasks as the ones before them finish; one progress view for the matrix."""

    def __init__(self, ray: Any, jobs: BatchJobs, cpus: int, retries: int, reporter: Reporter):
        self.ray, self.jobs, self.cpus, self.reporter = ray, jobs, cpus, reporter
        options = {"num_cpus": cpus, "max_retries": retries, "retry_exceptions": False}
        self.ladder = ray.remote(**options)(ladder_task)
        self.evaluate = ray.remote(**options)(evaluate_task)
        self.finish = ray.remote(**options)(finish_task)
        self.outcomes = {job.name: ModelOutcome(job.name, job.source) for job in jobs.models}
        self.pending: dict[Any, tuple[str, str, Callable[[Any], None]]] = {}
        self.evaluations: dict[str, dict[int, Any]] = {}

    def run(self, address: str, started: float) -> BatchSummary:
        per_model = 2 + sum(len(job.types) for job in self.jobs.models) // max(1, len(self.jobs.models))
        self.reporter.start(
            f"batch of {len(self.jobs.models)} models", len(self.jobs.models) * per_model, "tasks"
        )
        for job in self.jobs.models:
            self._submit(
                job,
                "ladder",
                self.ladder.remote(job, self._folder(job), self.jobs.evaluate, self.cpus),
                partial(self._ladder_done, job),
            )
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1)
            name, stage, then = self.pending.pop(ready[0])
            self.reporter.advance(1)
            try:
                result = self.ray.get(ready[0])
            except Exception as error:  # noqa: BLE001 - a task's failure fails its model, not the batch
                self._fail(name, stage, error)
                continue
            if self.outcomes[name].status != "failed":
                then(result)
        self.reporter.finish()
        return BatchSummary(
            self.jobs.output, address, list(self.outcomes.values()), time.perf_counter() - started
        )

    def _folder(self, job: ModelJob) -> str:
        return Store(self.jobs.output).child(job.name).url

    def _submit(self, job: ModelJob, stage: str, ref: Any, then: Callable[[Any], None]) -> None:
        self.pending[ref] = (job.name, stage, then)

    def _fail(self, name: str, stage: str, error: BaseException) -> None:
        cause = getattr(error, "cause", None) or error
        reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        outcome = self.outcomes[name]
        if outcome.status != "failed":
            outcome.status, outcome.reason = "failed", f"{stage}: {reason}"
            self.reporter.warn(f"{name} failed in its {stage} task: {reason}")

    def _ladder_done(self, job: ModelJob, result: dict[str, Any]) -> None:
        outcome = self.outcomes[job.name]
        outcome.files, outcome.task_seconds["ladder"] = result["files"], result["seconds"]
        if result["finished"]:
            manifest = read_manifest(Store(self._folder(job))).get("outputs", {})
            outcome.status, outcome.report, outcome.card = (
                "skipped",
                manifest.get("report"),
                manifest.get("card"),
            )
            self.reporter.note(f"{job.name}: all files verified, report and card current: skipped")
            return
        self.reporter.note(
            f"{job.name}: {len(result['files'])} files {'verified' if result['skipped'] else 'written'}"
        )
        if not self.jobs.evaluate:
            self._finish(job, [])
            return
        files, folder = result["files"], self._folder(job)
        text = str(self.jobs.text) if self.jobs.text else None
        self.evaluations[job.name] = {}
        options = self.jobs.eval_options
        first = self.evaluate.remote(folder, files[0], files[0], text, options, self.cpus)
        self._submit(job, "evaluate", first, partial(self._evaluated, job, 0, len(files)))
        for index, file in enumerate(files[1:], start=1):
            ref = self.evaluate.remote(folder, file, files[0], text, options, self.cpus, first)
            self._submit(job, "evaluate", ref, partial(self._evaluated, job, index, len(files)))

    def _evaluated(self, job: ModelJob, index: int, total: int, evaluation: Any) -> None:
        done = self.evaluations[job.name]
        done[index] = evaluation
        self.outcomes[job.name].task_seconds[f"evaluate {evaluation.files[0].path.name}"] = evaluation.seconds
        if len(done) == total:
            self._finish(job, [done[i] for i in range(total)])

    def _finish(self, job: ModelJob, evaluations: list[Any]) -> None:
        outcome = self.outcomes[job.name]
        if evaluations:
            outcome.reference_reused = all(e.reference_from_cache for e in evaluations[1:])
        ref = self.finish.remote(job, self._folder(job), outcome.files, evaluations)
        self._submit(job, "report", ref, partial(self._finished, job))

    def _finished(self, job: ModelJob, outputs: dict[str, Any]) -> None:
        outcome = self.outcomes[job.name]
        outcome.task_seconds["report"] = float(outputs.pop("seconds", 0.0))
        outcome.status, outcome.report, outcome.card = "done", outputs.get("report"), outputs.get("card")
