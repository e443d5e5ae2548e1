"""Benchmark: convert a full-size Phi-3.5-mini-shaped checkpoint (3.8B, random BF16) to F16.

Reports wall time, peak RSS of the converting process, and throughput in GB/s of source read,
against a numpy baseline measured in the same run on the same (page-cached) files: reading every
source byte through a memory map and writing the same number of bytes out, with no conversion.

    python benchmarks/convert_benchmark.py [--keep DIR]

Prints a table, then one JSON line (the last line of stdout).  Needs ~25 GB of free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks.full_size_checkpoint import build_full_size_checkpoint  # noqa: E402
from phiquant.checkpoint.directory import open_checkpoint  # noqa: E402

COPY_CHUNK = 64 * 1024 * 1024


def numpy_copy_baseline(checkpoint: Path, output: Path) -> tuple[float, int]:
    """Read every tensor's bytes through a memory map and write them out: the I/O floor."""
    entries = sorted(open_checkpoint(checkpoint).tensors.values(), key=lambda e: (e.file, e.data_start))
    started = time.perf_counter()
    total = 0
    with open(output, "wb") as out:
        for entry in entries:
            for start in range(0, entry.nbytes, COPY_CHUNK):
                size = min(COPY_CHUNK, entry.nbytes - start)
                view = np.memmap(
                    entry.file, dtype=np.uint8, mode="r", offset=entry.data_start + start, shape=(size,)
                )
                out.write(view.tobytes())
                del view
                total += size
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - started, total


def timed_convert(checkpoint: Path, output: Path) -> tuple[float, int]:
    """Run `phiquant convert` as its own process; return wall seconds and its peak RSS in bytes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phiquant",
            "convert",
            str(checkpoint),
            "-o",
            str(output),
            "--outtype",
            "f16",
            "-q",
        ],
        env=env,
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"phiquant convert failed with status {status}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build (or reuse) the checkpoint here and keep it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phiquant-convert-bench-"))
    checkpoint = args.keep or work / "Phi-3.5-mini-instruct"
    try:
        if not (checkpoint / "model.safetensors.index.json").exists():
            started = time.perf_counter()
            build_full_size_checkpoint(checkpoint)
            print(f"built checkpoint in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        source_bytes = open_checkpoint(checkpoint).source_bytes
        numpy_copy_baseline(checkpoint, work / "warmup.bin")  # bring the source into the page cache
        (work / "warmup.bin").unlink()
        baseline_seconds, copied = numpy_copy_baseline(checkpoint, work / "copy.bin")
        (work / "copy.bin").unlink()
        convert_seconds, peak_rss = timed_convert(checkpoint, work / "model-f16.gguf")
        output_bytes = (work / "model-f16.gguf").stat().st_size
        gb = 1e9
        result = {
            "benchmark": "convert_f16",
            "source_gb": source_bytes / gb,
            "output_gb": output_bytes / gb,
            "convert_seconds": convert_seconds,
            "convert_gb_per_s": source_bytes / gb / convert_seconds,
            "convert_peak_rss_gb": peak_rss / gb,
            "numpy_copy_seconds": baseline_seconds,
            "numpy_copy_gb_per_s": copied / gb / baseline_seconds,
            "throughput_ratio": (source_bytes / convert_seconds) / (copied / baseline_seconds),
            "cpu_count": os.cpu_count(),
        }
        print(
            f"source                {result['source_gb']:.2f} GB (BF16), output {result['output_gb']:.2f} GB (F16)"
        )
        print(
            f"phiquant convert      {convert_seconds:7.1f} s  {result['convert_gb_per_s']:.2f} GB/s  peak RSS {result['convert_peak_rss_gb']:.2f} GB"
        )
        print(f"numpy copy baseline   {baseline_seconds:7.1f} s  {result['numpy_copy_gb_per_s']:.2f} GB/s")
        print(f"throughput ratio      {result['throughput_ratio']:.2f}x of the numpy copy")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
