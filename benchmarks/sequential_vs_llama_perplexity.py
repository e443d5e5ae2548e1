"""Benchmark: a ladder's report by sequential evaluation against llama.cpp's llama-perplexity over the
whole text, in one run on one machine.

    python benchmarks/sequential_vs_llama_perplexity.py [--model M] [--work DIR] [--rel-error R]

The ladder is a model as F16 + Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K, made by phiquant before
anything is timed, and the text phiquant's default held-out text.  --model is `bundled` (the default,
phiquant.bundled), a model name of benchmarks/budget_scale.py (`large`: the issue's ~270M-parameter
random-weight Phi-3.5-layout checkpoint, `mid`: ~45M; made on first use and cached), or a Hugging Face
checkpoint directory.  The two sides, each started as a user would, each timed by wall clock with its
peak RSS read from the kernel (wait4's rusage of that process):

  phiquant    `phiquant report DIR --speed-runs 0 --no-plot --json`: sequential evaluation (default
              --rel-error 0.05) of all seven files in one sweep, with an empty reference cache (the
              reference's logits are computed in the run, as llama-perplexity's are)
  llama.cpp   llama-perplexity (built from the vendored llama.cpp by benchmarks/llama_tools.py), as its
              README says to measure KLD: `-m F16.gguf -f TEXT --kl-divergence-base BASE` once, then
              `-m TYPE.gguf --kl-divergence-base BASE --kl-divergence` for each of the six files; the
              whole text, `-c 512` and the default batch 2048 (phiquant's layout)

Reported: total time of each side and their ratio, peak RSS of each (the largest of llama.cpp's seven
runs), and for each file llama-perplexity's full-text mean KLD against phiquant's 95% interval.
Prints a table, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks.budget_scale import MODELS, model_dir  # noqa: E402
from benchmarks.llama_tools import tool  # noqa: E402
from phiquant import api  # noqa: E402
from phiquant.bundled import heldout_text_path  # noqa: E402

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
CTX = "512"  # phiquant's default window; llama-perplexity's default is the model's trained context
MEAN_KLD = re.compile(r"Mean\s+KLD:\s+([-0-9.e]+)\s+±\s+([-0-9.e]+)")


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout + stderr) of one process."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - began
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{text[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, text


def checkpoint(model: str) -> tuple[Path, str]:
    """(checkpoint directory, label) of --model: a budget_scale.py model name or a directory."""
    if model in MODELS:
        return model_dir(model)[0], model
    directory = Path(model)
    if not (directory / "config.json").is_file():
        raise SystemExit(f"--model {model}: neither one of {', '.join(MODELS)} nor a checkpoint directory")
    return directory.resolve(), directory.name


def ladder(work: Path, model: Path, label: str) -> dict[str, Path]:
    directory = work / f"ladder-{label}"
    if not directory.exists():
        written = api.quantize(model, ["F16", *LADDER], directory)
        return {f.type: f.path for f in written.files}
    return {p.stem.rsplit("-", 1)[1]: p for p in sorted(directory.glob("*.gguf"))}


def run_phiquant(files: dict[str, Path], work: Path, rel_error: float) -> dict[str, object]:
    env = dict(os.environ)
    env["PHIQUANT_CACHE"] = tempfile.mkdtemp(prefix="cold-cache-", dir=work)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "phiquant", "report", str(files["F16"].parent), "--speed-runs", "0"]
    command += ["--no-plot", "--json", "--rel-error", str(rel_error), "-o", str(work / "report")]
    seconds, rss, text = timed(command, env)
    document = json.loads(text[text.index("{") :])
    evaluation = document["evaluation"]
    intervals = {f["type"]: f["estimate"]["kld_mean"] for f in evaluation["files"] if f["type"] != "F16"}
    return {"seconds": seconds, "peak_rss": rss, "sequential": evaluation["sequential"], "kld": intervals}


def run_llama_perplexity(files: dict[str, Path], work: Path) -> dict[str, object]:
    binary = str(tool("llama-perplexity"))
    base = work / "f16.kld"
    seconds, rss, _ = timed(
        [
            binary,
            "-c",
            CTX,
            "-m",
            str(files["F16"]),
            "-f",
            str(heldout_text_path()),
            "--kl-divergence-base",
            str(base),
        ]
    )
    kld: dict[str, tuple[float, float]] = {}
    for file_type in LADDER:
        took, peak, text = timed(
            [
                binary,
                "-c",
                CTX,
                "-m",
                str(files[file_type]),
                "--kl-divergence-base",
                str(base),
                "--kl-divergence",
            ]
        )
        seconds, rss = seconds + took, max(rss, peak)
        found = MEAN_KLD.search(text)
        if found is None:
            raise RuntimeError(f"no mean KLD in llama-perplexity's output for {file_type}:\n{text[-2000:]}")
        kld[file_type] = (float(found.group(1)), float(found.group(2)))
    base.unlink()
    return {"seconds": seconds, "peak_rss": rss, "kld": kld}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the ladder here (default: a temporary directory)")
    parser.add_argument("--rel-error", type=float, default=0.05)
    parser.add_argument(
        "--model",
        default="bundled",
        help=f"{', '.join(MODELS)} (benchmarks/budget_scale.py's models) or a checkpoint directory",
    )
    args = parser.parse_args()
    model, label = checkpoint(args.model)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        files = ladder(work, model, label)
        tool("llama-perplexity")  # built (once) before anything is timed
        ours = run_phiquant(files, work, args.rel_error)
        print(f"phiquant: {ours['seconds']:.1f} s, peak RSS {int(ours['peak_rss']) / 1e6:.0f} MB", flush=True)  # type: ignore[call-overload]
        theirs = run_llama_perplexity(files, work)
    ratio = float(ours["seconds"]) / float(theirs["seconds"])  # type: ignore[arg-type]
    sequential = ours["sequential"]
    print(
        f"{label} ladder F16 + {', '.join(LADDER)} on the held-out text: phiquant sequential "
        f"{ours['seconds']:.1f} s (peak RSS {int(ours['peak_rss']) / 1e6:.0f} MB, "  # type: ignore[call-overload]
        f"{sequential['windows_used']} of {sequential['windows_available']} windows), "  # type: ignore[index]
        f"llama-perplexity {theirs['seconds']:.1f} s (peak RSS {int(theirs['peak_rss']) / 1e6:.0f} MB): "  # type: ignore[call-overload]
        f"{ratio:.3f}x the time"
    )
    rows = {}
    print(f"{'type':8} {'llama-perplexity KLD':>22} {'phiquant 95% interval':>26} {'inside':>7}")
    for file_type in LADDER:
        full, _ = theirs["kld"][file_type]  # type: ignore[index]
        interval = ours["kld"][file_type]  # type: ignore[index]
        inside = interval["low"] <= full <= interval["high"]
        rows[file_type] = {
            "llama_perplexity": full,
            "interval": [interval["low"], interval["high"]],
            "inside": inside,
        }
        print(
            f"{file_type:8} {full:22.6f} {interval['low']:12.6f} .. {interval['high']:10.6f} {str(inside):>7}"
        )
    print(
        json.dumps(
            {
                "sequential_vs_llama_perplexity": {
                    "model": label,
                    "phiquant_seconds": ours["seconds"],
                    "llama_perplexity_seconds": theirs["seconds"],
                    "time_ratio": ratio,
                    "phiquant_peak_rss": ours["peak_rss"],
                    "llama_perplexity_peak_rss": theirs["peak_rss"],
                    "sequential": sequential,
                    "files": rows,
                }
            }
        )
    )


if __name__ == "__main__":
    main()
