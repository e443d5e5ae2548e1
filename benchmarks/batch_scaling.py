"""`phiquant batch` on the embedded Ray against the same work as plain commands run one after another.

    python benchmarks/batch_scaling.py [--types Q8_0 Q4_0 Q4_K_M] [--ctx 64] [--windows 4]

The matrix: three Phi fixture checkpoints (Phi-3.5-mini, Phi-3-mini-4k, Phi-3-medium-4k layouts) x three
types, each model with its F16 reference, evaluation, report and card.  Sequentially, per model:
`phiquant quantize SRC -t F16 -t ... -o DIR`, `phiquant report DIR`, `phiquant card DIR`.  Then
`phiquant batch JOBS.toml` (embedded local Ray, one core per task).  Both in one run, on fresh caches.

Prints wall seconds of each, their ratio, CPU utilisation (CPU seconds of the run's process tree, sampled
from /proc, over wall x cores), the batch's per-task seconds, and what N machines would give on paper:
the makespan is at least the largest of (every task's seconds / all cores) and the longest chain of one
model (ladder, then reference evaluation, then the slowest other evaluation, then report).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class TreeCPU:
    """CPU seconds used by a process and all its descendants, sampled every 0.2 s from /proc (a process
    that exits between samples loses at most its last 0.2 s)."""

    def __init__(self, root: int):
        self.root, self.seen, self._stop = root, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            parents: dict[int, int] = {}
            times: dict[int, float] = {}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for pid, seconds in times.items():
                ancestor = pid
                while ancestor not in (0, 1, self.root) and ancestor in parents:
                    ancestor = parents[ancestor]
                if ancestor == self.root:
                    self.seen[pid] = max(self.seen.get(pid, 0.0), seconds)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        return sum(self.seen.values())


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    sampler = TreeCPU(process.pid)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    cpu = sampler.stop()
    if process.returncode not in (0,):
        raise SystemExit(f"{' '.join(command)} failed with exit {process.returncode}")
    return wall, cpu, stdout


def build_fixtures(directory: Path) -> dict[str, Path]:
    from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K, PHI3_MINI_4K, PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    return {
        spec.name_or_path: build_phi3_checkpoint(directory / spec.name_or_path, spec)
        for spec in (PHI35_MINI, PHI3_MINI_4K, PHI3_MEDIUM_4K)
    }


def on_paper(tasks: dict[str, dict[str, float]], cores_per_machine: int) -> dict[str, float]:
    total = sum(sum(model.values()) for model in tasks.values())
    chains = []
    for model in tasks.values():
        evaluations = sorted((v for k, v in model.items() if k.startswith("evaluate ")), reverse=True)
        chains.append(model.get("ladder", 0.0) + sum(evaluations[:2]) + model.get("report", 0.0))
    longest = max(chains)
    return {
        f"{n} machine{'s' if n > 1 else ''}": round(max(total / (n * cores_per_machine), longest), 1)
        for n in (1, 2, 4, 8)
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0", "Q4_K_M"])
    parser.add_argument("--ctx", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="phiquant-batch-bench-") as temporary:
        work = Path(temporary)
        sources = build_fixtures(work / "checkpoints")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        phiquant = [sys.executable, "-m", "phiquant"]

        env_sequential = dict(env, PHIQUANT_CACHE=str(work / "cache-sequential"))
        started = time.perf_counter()
        sequential_cpu = 0.0
        for name, source in sources.items():
            folder = work / "sequential" / name
            types = [arg for t in ["F16", *args.types] for arg in ("-t", t)]
            steps = [
                [*phiquant, "quantize", str(source), *types, "-o", str(folder)],
                [
                    *phiquant,
                    "report",
                    str(folder),
                    "--ctx",
                    str(args.ctx),
                    "--chunks",
                    str(args.windows),
                    "--speed-runs",
                    "0",
                ],
                [*phiquant, "card", str(folder)],
            ]
            for step in steps:
                sequential_cpu += run_measured(step, env_sequential)[1]
        sequential_wall = time.perf_counter() - started

        jobs = work / "jobs.toml"
        models = "".join(
            f'[[models]]\nsource = "{path}"\nname = "{name}"\n' for name, path in sources.items()
        )
        jobs.write_text(
            f'output = "batch"\n[eval]\nctx = {args.ctx}\nmax_windows = {args.windows}\n'
            f"[defaults]\ntypes = {json.dumps(args.types)}\n{models}"
        )
        env_batch = dict(env, PHIQUANT_CACHE=str(work / "cache-batch"))
        batch_wall, batch_cpu, stdout = run_measured([*phiquant, "batch", str(jobs), "--json"], env_batch)
        summary = json.loads(stdout)
        identical = all(
            (work / "batch" / m["name"] / f["path"]).read_bytes()
            == (work / "sequential" / m["name"] / f["path"]).read_bytes()
            for m in summary["models"]
            for f in m["files"]
        )
        tasks = {m["name"]: m["task_seconds"] for m in summary["models"]}
        print(
            json.dumps(
                {
                    "cores": cores,
                    "matrix": f"{len(sources)} models x {len(args.types)} types (+F16 reference), evaluation "
                    f"ctx {args.ctx} x {args.windows} windows",
                    "sequential_wall_s": round(sequential_wall, 1),
                    "batch_wall_s": round(batch_wall, 1),
                    "sequential_over_batch": round(sequential_wall / batch_wall, 2),
                    "cpu_utilisation_sequential": round(sequential_cpu / (sequential_wall * cores), 2),
                    "cpu_utilisation_batch": round(batch_cpu / (batch_wall * cores), 2),
                    "files_identical": identical,
                    "task_seconds": tasks,
                    "on_paper_makespan_s_with_2_core_machines": on_paper(tasks, 2),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
