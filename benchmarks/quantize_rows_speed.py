"""How fast quantize_rows turns float32 rows into ggml blocks, and how it scales with threads.

Quantizes one random matrix (default 4096 x 4096, a Phi-3-mini attention-sized tensor) to a few types
with 1, 2, ... up to --max-threads threads and prints millions of values per second.  The ctypes calls
release the GIL, so the figures should grow with the thread count until the cores run out.  The last line
of stdout is one JSON document with every measurement.

    python benchmarks/quantize_rows_speed.py --types Q4_K,Q6_K,IQ4_XS --rows 2048
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from phiquant.ggml import kernels as ggml
from phiquant.quant.quantize import quantize_rows
from phiquant.quant.types import parse_ggml_type


def measure(rows: np.ndarray, type_name: str, n_threads: int, weights: np.ndarray) -> float:
    ggml_type = parse_ggml_type(type_name)
    ggml.quantize_init(ggml_type)  # table construction is a one-off; keep it out of the timing
    started = time.perf_counter()
    quantize_rows(rows, ggml_type, weights, n_threads)
    return rows.size / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q8_0,Q4_K,Q6_K,IQ4_XS,IQ3_S")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--columns", type=int, default=4096)
    parser.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.rows, args.columns)).astype(np.float32)
    weights = rng.uniform(0.1, 2.0, args.columns).astype(np.float32)
    thread_counts = sorted({1, *range(2, args.max_threads + 1, 2), args.max_threads})
    results = []
    print(f"{'type':<8}" + "".join(f"{f'{n} thr':>10}" for n in thread_counts) + "   (M values/s)")
    for type_name in args.types.split(","):
        speeds = [measure(rows, type_name, n, weights) for n in thread_counts]
        print(f"{type_name:<8}" + "".join(f"{speed:>10.1f}" for speed in speeds))
        results += [
            {"type": type_name, "threads": n, "mvalues_per_s": round(speed, 2)}
            for n, speed in zip(thread_counts, speeds, strict=True)
        ]
    print(json.dumps({"rows": args.rows, "columns": args.columns, "results": results}))


if __name__ == "__main__":
    main()
