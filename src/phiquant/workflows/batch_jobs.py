"""What `phiquant batch` runs: the jobs file, and the work of each task (a model's ladder, one file's
evaluation, a model's report and card), as plain functions that Ray runs on its workers.

    output = "published"              # relative to the jobs file, on storage every worker sees, or an
                                      # object store URL (s3://bucket/prefix: workflows.batch_store)
    [eval]                            # optional: no [eval] table, no evaluation
    text = "held-out.txt"             # default: phiquant's bundled held-out text
    ctx = 512
    max_windows = 8
    [defaults]                        # every model's settings unless it gives its own
    types = ["Q4_K_M", "Q8_0"]
    imatrix = "auto"                  # or a file, or leave out
    reference = "F16"                 # the unquantized file written with the ladder, for KL divergence
    split_max_size = "48G"            # or split_max_tensors = N
    [[models]]
    source = "microsoft/Phi-3.5-mini-instruct"
    name = "Phi-3.5-mini-instruct"    # its output folder (default: the source's last part)

Each model's files go to <output>/<name>/ with phiquant-batch.json, which records every file's size and
sha256 and, once the report and card are written, the checksums they describe: a rerun skips a ladder
whose files verify, and a model whose report and card are current.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.evaluate.options import EvalOptions
from phiquant.workflows.batch_store import Store, is_url, local_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the cluster extra installs tomli there
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

MANIFEST = "phiquant-batch.json"
_MODEL_KEYS = {
    "source",
    "name",
    "types",
    "imatrix",
    "reference",
    "split_max_size",
    "split_max_tensors",
    "base_model",
}


@dataclass(frozen=True)
class ModelJob:
    name: str
    source: str
    types: tuple[str, ...]
    imatrix: str | None = None  # "auto", an imatrix file, or None
    reference: str = "F16"
    split_max_size: str | None = None
    split_max_tensors: int | None = None
    base_model: str | None = None  # for the card, when the files cannot tell


@dataclass(frozen=True)
class BatchJobs:
    output: str  # a local folder, or an object store URL
    models: tuple[ModelJob, ...]
    evaluate: bool
    text: Path | None = None
    eval_options: EvalOptions = field(default_factory=lambda: EvalOptions(speed_runs=0))


def read_jobs(path: str | Path) -> BatchJobs:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PhiquantError("no such jobs file", path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PhiquantError(f"cannot read the jobs file: {error}", path=path) from None
    except tomllib.TOMLDecodeError as error:
        raise PhiquantError(f"not valid TOML: {error}", path=path) from None
    base = path.parent
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise PhiquantError("needs at least one [[models]] table with a source", path=path)
    defaults = data.get("defaults", {})
    jobs = tuple(_model_job({**defaults, **model}, base, path) for model in models)
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise PhiquantError(
            f"two models share the output name {next(n for n in names if names.count(n) > 1)!r}", path=path
        )
    evaluation = data.get("eval")
    options = EvalOptions(speed_runs=0)
    text = None
    if isinstance(evaluation, dict):
        options = EvalOptions(
            ctx=_int(evaluation.get("ctx", options.ctx), "eval.ctx", path),
            max_windows=_int(evaluation["max_windows"], "eval.max_windows", path)
            if "max_windows" in evaluation
            else None,
            speed_runs=_int(evaluation.get("speed_runs", 0), "eval.speed_runs", path, minimum=0),
        )
        text = base / str(evaluation["text"]) if "text" in evaluation else None
    output = str(data.get("output", "batch-output"))
    if not is_url(output):
        output = str(base / local_path(output))
    return BatchJobs(output, jobs, isinstance(evaluation, dict), text, options)


def _model_job(table: dict[str, Any], base: Path, path: Path) -> ModelJob:
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise PhiquantError(f"unknown model setting {sorted(unknown)[0]!r}", path=path)
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise PhiquantError("every [[models]] entry needs a source (a folder, GGUF or model id)", path=path)
    local = base / source
    resolved = str(local) if local.exists() else source
    types = table.get("types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise PhiquantError(f"{source}: types must be a list of quantization types", path=path)
    name = str(table.get("name") or Path(source.split("@")[0]).name)
    if not name or "/" in name or name in (".", ".."):
        raise PhiquantError(f"{source}: name {name!r} cannot be a folder name", path=path)
    imatrix = table.get("imatrix")
    if imatrix is not None and imatrix != "auto":
        imatrix = str(base / str(imatrix))
    tensors = table.get("split_max_tensors")
    return ModelJob(
        name=name,
        source=resolved,
        types=tuple(types),
        imatrix=imatrix,
        reference=str(table.get("reference", "F16")).upper(),
        split_max_size=str(table["split_max_size"]) if "split_max_size" in table else None,
        split_max_tensors=_int(tensors, "split_max_tensors", path) if tensors is not None else None,
        base_model=table.get("base_model"),
    )


def _int(value: object, name: str, path: Path, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PhiquantError(f"{name} must be an integer of at least {minimum}, not {value!r}", path=path)
    return value


# The manifest ------------------------------------------------------------------------------------


def read_manifest(store: Store) -> dict[str, Any]:
    text = store.read_text(MANIFEST)
    try:
        data = json.loads(text) if text is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(store: Store, data: dict[str, Any]) -> None:
    store.write_text(MANIFEST, json.dumps(data, indent=2) + "\n")


def job_record(job: ModelJob) -> dict[str, Any]:
    """The job as the manifest stores it (JSON: tuples become lists)."""
    record: dict[str, Any] = json.loads(json.dumps(asdict(job)))
    return record


def recorded_files_verify(store: Store, job: ModelJob) -> list[dict[str, Any]] | None:
    """The manifest's files when it is for this job and every file exists with its size and checksum
    (read from the store itself when it is an object store)."""
    manifest = read_manifest(store)
    files = manifest.get("files")
    if manifest.get("job") != job_record(job) or not isinstance(files, list) or not files:
        return None
    for entry in files:
        for shard in entry["shards"]:
            if store.size_and_sha256(shard["name"]) != (shard["size"], shard["sha256"]):
                return None
    return files


def finished(store: Store, files: list[dict[str, Any]], evaluate: bool) -> bool:
    """The report (if evaluated) and card were written for exactly these files."""
    manifest = read_manifest(store)
    checksums = sorted(s["sha256"] for f in files for s in f["shards"])
    outputs = manifest.get("outputs") or {}
    wanted = ["card"] + (["report"] if evaluate else [])
    return manifest.get("finished_for") == checksums and all(
        isinstance(outputs.get(key), str) and store.exists(outputs[key]) for key in wanted
    )
