"""Benchmark: convert a PhiMoE-shaped checkpoint (16 experts, random BF16) to F16.

Reports, for `phiquant convert` as its own process: wall time, peak RSS against the size of one layer's
experts (streaming means the peak stays near a slab, not a layer), and the cost of the residual-stream
centring (archs/phimoe.py) as a ratio against the same conversion with centring switched off, plus the
numpy copy floor of convert_benchmark.py.

    python benchmarks/phimoe_convert_benchmark.py [--layers 8] [--hidden 1024] [--keep DIR]

Prints a table, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from tests.fixtures.phimoe_checkpoints import build_phimoe_checkpoint  # noqa: E402
from tests.fixtures.phimoe_specs import PHI35_MOE, phimoe_long_factors, phimoe_short_factors  # noqa: E402

from benchmarks.convert_benchmark import numpy_copy_baseline  # noqa: E402
from phiquant.checkpoint.directory import open_checkpoint  # noqa: E402

# The child reports its own peak (VmHWM): a child's ru_maxrss on Linux also counts the parent's resident
# memory at fork time, and this parent has just built the checkpoint with torch.
REPORT_PEAK = (
    "import atexit; atexit.register(lambda: open({peak!r}, 'w').write("
    "[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])); "
)
CONVERT = "from phiquant.cli import main; raise SystemExit(main({argv!r}))"
UNCENTRED = (
    "import functools; from phiquant.archs import phimoe; "
    "phimoe.build = functools.partial(phimoe.build, centre_residual_writers=False); "
)


def timed(code: str, peak_file: Path) -> tuple[float, int]:
    """Run `code` in a fresh interpreter; return wall seconds and its peak RSS in bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", REPORT_PEAK.format(peak=str(peak_file)) + code], env=env)
    if result.returncode != 0:
        raise SystemExit(f"conversion failed with status {result.returncode}")
    return time.perf_counter() - started, int(peak_file.read_text()) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (intermediate = 1.5x)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the checkpoint here and keep it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phiquant-phimoe-bench-"))
    checkpoint = args.keep or work / PHI35_MOE.name_or_path
    hidden, ff = args.hidden, args.hidden * 3 // 2
    try:
        if not (checkpoint / "model.safetensors.index.json").exists():
            build_phimoe_checkpoint(
                checkpoint,
                PHI35_MOE,
                hidden_size=hidden,
                intermediate_size=ff,
                num_attention_heads=hidden // 128,  # head_dim 128 as the real model: 64 factors
                rope_scaling=dataclasses.replace(
                    PHI35_MOE.rope_scaling,
                    long_factor=phimoe_long_factors(64),
                    short_factor=phimoe_short_factors(64),
                ),
                num_key_value_heads=max(1, hidden // 512),
                num_hidden_layers=args.layers,
                shards=4,
            )
        source_bytes = open_checkpoint(checkpoint).source_bytes
        layer_experts_f32 = PHI35_MOE.num_local_experts * 3 * hidden * ff * 4
        numpy_copy_baseline(checkpoint, work / "warmup.bin")
        (work / "warmup.bin").unlink()
        copy_seconds, copied = numpy_copy_baseline(checkpoint, work / "copy.bin")
        (work / "copy.bin").unlink()
        argv = ["convert", str(checkpoint), "-o", str(work / "out.gguf"), "--outtype", "f16", "-q"]
        centred_seconds, centred_rss = timed(CONVERT.format(argv=argv), work / "peak")
        plain_seconds, plain_rss = timed(UNCENTRED + CONVERT.format(argv=argv), work / "peak")
        gb = 1e9
        result = {
            "benchmark": "phimoe_convert_f16",
            "source_gb": source_bytes / gb,
            "convert_seconds": centred_seconds,
            "convert_gb_per_s": source_bytes / gb / centred_seconds,
            "peak_rss_gb": centred_rss / gb,
            "one_layer_experts_f32_gb": layer_experts_f32 / gb,
            "uncentred_seconds": plain_seconds,
            "uncentred_peak_rss_gb": plain_rss / gb,
            "centring_time_ratio": centred_seconds / plain_seconds,
            "throughput_ratio_vs_numpy_copy": (source_bytes / centred_seconds) / (copied / copy_seconds),
            "cpu_count": os.cpu_count(),
        }
        print(f"source                 {result['source_gb']:.2f} GB BF16, {args.layers} layers x 16 experts")
        print(
            f"convert (centred)      {centred_seconds:6.1f} s  {result['convert_gb_per_s']:.2f} GB/s  "
            f"peak RSS {result['peak_rss_gb']:.2f} GB (one layer's experts in F32: "
            f"{result['one_layer_experts_f32_gb']:.2f} GB)"
        )
        print(
            f"convert (no centring)  {plain_seconds:6.1f} s  peak RSS {result['uncentred_peak_rss_gb']:.2f} GB"
        )
        print(f"centring time ratio    {result['centring_time_ratio']:.2f}x")
        print(f"vs numpy copy          {result['throughput_ratio_vs_numpy_copy']:.2f}x of its throughput")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
