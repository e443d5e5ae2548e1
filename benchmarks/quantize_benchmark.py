"""Benchmark: one-pass quantization of a full-size Phi-3.5-mini-shaped checkpoint against the
two-step path llama.cpp users follow (HF -> F16 GGUF -> llama_model_quantize), in one run.

    python benchmarks/quantize_benchmark.py [--keep DIR] [--skip-ladder] [--skip-threads]

1. HF -> Q4_K_M in one pass (phiquant) vs HF -> F16 GGUF (phiquant convert) + llama_model_quantize
   F16 -> Q4_K_M: wall time, peak RSS of each process, intermediate bytes written.
2. A ladder Q8_0 + Q6_K + Q5_K_M + Q4_K_M in one pass vs four llama_model_quantize runs from F16.
3. Thread scaling of the one-pass Q4_K_M: 1 thread vs all cores.
Every step runs as its own process, timed with os.wait4 (wall time and the child's peak RSS).
Prints a table, then one JSON line (the last line of stdout).  Needs ~40 GB of free disk.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks.full_size_checkpoint import build_full_size_checkpoint  # noqa: E402

LADDER = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]
FTYPES = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15}

# llama.cpp's own quantizer, as llama-quantize runs it, in a child process of its own.
LLAMA_QUANTIZE = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3]); params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def timed(command: list[str]) -> tuple[float, int, float]:
    """Run a command; return (wall seconds, peak RSS bytes, CPU seconds of user and system time)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:5])} ... failed with status {status}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def phiquant(*args: str) -> list[str]:
    return [sys.executable, "-m", "phiquant", *args, "-q"]


def llama_quantize(source: Path, output: Path, preset: str, threads: int) -> list[str]:
    return [sys.executable, "-c", LLAMA_QUANTIZE, str(source), str(output), str(FTYPES[preset]), str(threads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build (or reuse) the checkpoint here and keep it")
    parser.add_argument("--skip-ladder", action="store_true")
    parser.add_argument("--skip-threads", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="phiquant-quantize-bench-"))
    checkpoint = args.keep or work / "Phi-3.5-mini-instruct"
    result: dict[str, float | int | str] = {"benchmark": "quantize", "cpu_count": cores}
    try:
        if not (checkpoint / "model.safetensors.index.json").exists():
            build_full_size_checkpoint(checkpoint)
        one_pass = work / "one"
        result["one_pass_q4km_s"], result["one_pass_q4km_rss"], result["one_pass_q4km_cpu_s"] = timed(
            phiquant("quantize", str(checkpoint), "-t", "Q4_K_M", "-o", str(one_pass))
        )
        f16 = work / "two" / "model-F16.gguf"
        f16.parent.mkdir()
        result["convert_f16_s"], result["convert_f16_rss"], result["convert_f16_cpu_s"] = timed(
            phiquant("convert", str(checkpoint), "-o", str(f16), "--outtype", "f16")
        )
        result["intermediate_bytes"] = f16.stat().st_size
        result["llama_q4km_s"], result["llama_q4km_rss"], result["llama_q4km_cpu_s"] = timed(
            llama_quantize(f16, work / "two" / "q4km.gguf", "Q4_K_M", cores)
        )
        result["two_step_q4km_s"] = float(result["convert_f16_s"]) + float(result["llama_q4km_s"])
        result["one_pass_vs_two_step"] = float(result["one_pass_q4km_s"]) / float(result["two_step_q4km_s"])
        # A one pass still runs every ggml block quantizer llama_model_quantize runs (byte-identical
        # output), so what it can save is at most the F16 step: this ratio is its floor.
        result["one_pass_floor"] = float(result["llama_q4km_s"]) / float(result["two_step_q4km_s"])
        shutil.rmtree(one_pass)
        if not args.skip_ladder:
            ladder_args = [arg for preset in LADDER for arg in ("-t", preset)]
            result["ladder_one_pass_s"], result["ladder_one_pass_rss"], _ = timed(
                phiquant("quantize", str(checkpoint), *ladder_args, "-o", str(work / "ladder"))
            )
            shutil.rmtree(work / "ladder")
            separate = 0.0
            for preset in LADDER:
                output = work / "two" / f"ladder-{preset}.gguf"
                separate += timed(llama_quantize(f16, output, preset, cores))[0]
                output.unlink()
            result["ladder_llama_from_f16_s"] = separate
            result["ladder_ratio"] = float(result["ladder_one_pass_s"]) / separate
        if not args.skip_threads:
            result["one_thread_q4km_s"], _, _ = timed(
                phiquant(
                    "quantize", str(checkpoint), "-t", "Q4_K_M", "-o", str(work / "t1"), "--threads", "1"
                )
            )
            result["thread_speedup"] = float(result["one_thread_q4km_s"]) / float(result["one_pass_q4km_s"])
        gb = 1e9
        print(
            f"HF -> Q4_K_M one pass           {result['one_pass_q4km_s']:7.1f} s  CPU {result['one_pass_q4km_cpu_s']:6.1f} s  peak RSS {float(result['one_pass_q4km_rss']) / gb:.2f} GB  no intermediate"
        )
        print(
            f"HF -> F16 GGUF (phiquant)       {result['convert_f16_s']:7.1f} s  CPU {result['convert_f16_cpu_s']:6.1f} s  peak RSS {float(result['convert_f16_rss']) / gb:.2f} GB  intermediate {float(result['intermediate_bytes']) / gb:.2f} GB"
        )
        print(
            f"F16 -> Q4_K_M (llama.cpp)       {result['llama_q4km_s']:7.1f} s  CPU {result['llama_q4km_cpu_s']:6.1f} s  peak RSS {float(result['llama_q4km_rss']) / gb:.2f} GB"
        )
        print(
            f"one pass / two step             {result['one_pass_vs_two_step']:.2f}x  (floor for any one pass: {result['one_pass_floor']:.2f}x)"
        )
        if "ladder_ratio" in result:
            print(
                f"ladder of 4, one pass           {result['ladder_one_pass_s']:7.1f} s  peak RSS {float(result['ladder_one_pass_rss']) / gb:.2f} GB"
            )
            print(f"ladder of 4, llama.cpp from F16 {result['ladder_llama_from_f16_s']:7.1f} s")
            print(f"ladder ratio                    {result['ladder_ratio']:.2f}x")
        if "thread_speedup" in result:
            print(
                f"Q4_K_M with 1 thread            {result['one_thread_q4km_s']:7.1f} s  ({result['thread_speedup']:.2f}x slower than {cores} threads)"
            )
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
