"""Benchmark: Ctrl-C and SIGTERM at random moments of real commands, with the CPU busy beside them.

    python benchmarks/interrupt_stress.py [--runs 200] [--hogs N] [--seed 0]

Commands: convert (F16), a three-type quantize ladder, imatrix and report, on a random-weight
Phi-3-medium-layout checkpoint of about 40 M parameters (each command takes seconds).  Each is first run
twice without a signal: the faster duration sets the window the signals fall in, and its outputs are the
reference.  Then each run gets SIGINT or SIGTERM at a uniformly random moment of that window (after
interpreter start-up, before which Python itself answers signals), with a fresh cache, until `--runs` runs
were ended by their signal.  Every signalled run must pass:
  - it exits 130 (SIGINT) or 143 (SIGTERM), or 0 if it finished before the signal came;
  - no temporary file (`.phiquant-partial`) or scratch folder (the run's own TMPDIR) is left;
  - every output file that exists is byte-identical to the reference run's (complete, never torn);
  - stderr holds one closing line, and every file it says it removed is absent.
`--hogs` busy-looping processes (default: one per core) run beside the whole time.
Prints a table per command, then one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.cli.run import cli_environment, restore_default_sigint  # noqa: E402

STARTUP_SECONDS = 0.25  # the interpreter's own start, before phiquant can answer a signal
# Big enough that each command spends most of its time writing or evaluating, small enough for
# hundreds of runs: about 40 M parameters, most of them the 32064-token embeddings.
SHAPE = dict(
    hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4
)
EXIT_FOR = {signal.SIGINT: 130, signal.SIGTERM: 143}


def busy_loop() -> None:
    while True:
        pass


@dataclass
class Command:
    name: str
    arguments: list[str]
    outputs: Path  # the folder whose files the command writes
    seconds: float = 0.0
    reference: dict[str, str] = field(default_factory=dict)  # file name -> sha256


@dataclass
class Tally:
    runs: int = 0
    interrupted: int = 0
    finished_first: int = 0
    failures: list[str] = field(default_factory=list)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_files(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def run_once(command: Command, scratch: Path, delay: float | None, sent: int) -> tuple[int, str, list[str]]:
    """Run in a fresh output folder copy; signal after `delay` seconds (None: no signal)."""
    if command.outputs.exists():
        shutil.rmtree(command.outputs)
    command.outputs.mkdir(parents=True)
    private_tmp = scratch / "tmp"
    shutil.rmtree(private_tmp, ignore_errors=True)
    private_tmp.mkdir()
    # A fresh cache each run: what one run cached (report's reference logits) would make the next
    # finish before its signal.
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = cli_environment() | {"TMPDIR": str(private_tmp), "PHIQUANT_CACHE": str(cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "phiquant", *command.arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=restore_default_sigint,
    )
    if delay is not None:
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(sent)
    _, stderr = process.communicate(timeout=600)
    leftovers = [p.name for p in command.outputs.iterdir() if p.name.endswith(".phiquant-partial")]
    leftovers += [f"TMPDIR/{p.name}" for p in private_tmp.iterdir()]
    leftovers += [f"cache/{p.name}" for p in cache.rglob("*.phiquant-partial")]
    return process.returncode, stderr, leftovers


def complete(path: Path, sha: str, reference_sha: str | None) -> bool:
    """GGUF files are deterministic: byte-identical to the reference run's.  A report carries timings,
    so its files are checked for being whole: JSON that parses, a PNG that reaches its IEND chunk,
    Markdown ending in its last newline."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return True
        except ValueError:
            return False
    if path.suffix == ".png":
        return path.read_bytes().endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8").endswith("\n")
    return sha == reference_sha


def check_run(command: Command, code: int, stderr: str, leftovers: list[str], sent: int) -> str | None:
    """What went wrong with one interrupted run, or None."""
    if code not in (0, EXIT_FOR[sent]):
        return f"exit {code}: {stderr.strip()[-300:]}"
    if "Traceback" in stderr:
        return "traceback: " + stderr.strip()[-300:]
    if leftovers:
        return f"left behind: {leftovers}"
    present = output_files(command.outputs)
    for name, sha in present.items():
        if not complete(command.outputs / name, sha, command.reference.get(name)):
            return f"{name} is not the complete file an uninterrupted run writes (torn or partial)"
    if code == 0:
        return None
    closing = [line for line in stderr.splitlines() if line.startswith("phiquant: ")]
    if len(closing) != 1:
        return f"expected one closing line, got: {closing}"
    line = closing[0]
    if "partial output removed: " in line:
        named = line.split("partial output removed: ", 1)[1].split(", ")
        falsely = [name for name in named if name in present]
        if falsely:
            return f"claims to have removed {falsely}, which exist"
    elif "no partial output was left to remove" not in line:
        return f"unexpected closing line: {line}"
    return None


def prepare(work: Path) -> list[Command]:
    from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    from phiquant import api

    checkpoint = build_phi3_checkpoint(work / "checkpoint", PHI3_MEDIUM_4K, **SHAPE)
    ladder_dir = work / "ladder"
    ladder_dir.mkdir()
    model = api.convert(checkpoint, ladder_dir / "m-F16.gguf", "f16").path
    api.quantize(model, ["Q8_0"], ladder_dir)
    return [
        Command(
            "convert",
            ["convert", str(checkpoint), "-o", str(work / "out-convert" / "m.gguf"), "--outtype", "f16"],
            work / "out-convert",
        ),
        Command(
            "ladder",
            [
                "quantize",
                str(checkpoint),
                "-t",
                "Q8_0",
                "-t",
                "Q4_K_M",
                "-t",
                "Q6_K",
                "-o",
                str(work / "out-ladder"),
            ],
            work / "out-ladder",
        ),
        Command(
            "imatrix",
            ["imatrix", str(model), "--chunks", "4", "-o", str(work / "out-imatrix" / "m.imatrix.gguf")],
            work / "out-imatrix",
        ),
        Command(
            "report",
            ["report", str(ladder_dir), "--chunks", "4", "--speed-runs", "0", "-o", str(work / "out-report")],
            work / "out-report",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="runs ended by their signal, in all, spread over the commands"
    )
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-looping processes beside")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    hogs = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.hogs)]
    with tempfile.TemporaryDirectory(prefix="interrupt-stress-") as temporary:
        work = Path(temporary)
        commands = prepare(work)
        for hog in hogs:
            hog.start()
        try:
            tallies = stress(commands, work, args.runs, rng)
        finally:
            for hog in hogs:
                hog.terminate()
    report(commands, tallies, args)


def stress(commands: list[Command], work: Path, runs: int, rng: random.Random) -> dict[str, Tally]:
    """Signal runs until `runs` of them were ended by their signal (a run that finished first is
    checked too but not counted), giving up after three times as many attempts."""
    for command in commands:
        durations = []
        for _ in range(2):  # the faster of two runs: the first also pays for cold files
            started = time.perf_counter()
            code, stderr, _ = run_once(command, work, None, signal.SIGINT)
            durations.append(time.perf_counter() - started)
            if code != 0:
                raise SystemExit(f"{command.name} failed without a signal: {stderr}")
        command.seconds = min(durations)
        command.reference = output_files(command.outputs)
    tallies = {command.name: Tally() for command in commands}
    for index in range(3 * runs):
        if sum(t.interrupted for t in tallies.values()) >= runs:
            break
        command = commands[index % len(commands)]
        sent = rng.choice((signal.SIGINT, signal.SIGTERM))
        delay = rng.uniform(STARTUP_SECONDS, command.seconds)
        code, stderr, leftovers = run_once(command, work, delay, sent)
        tally = tallies[command.name]
        tally.runs += 1
        tally.interrupted += code != 0
        tally.finished_first += code == 0
        problem = check_run(command, code, stderr, leftovers, sent)
        if problem:
            tally.failures.append(f"{signal.Signals(sent).name} at {delay:.2f} s: {problem}")
    return tallies


def report(commands: list[Command], tallies: dict[str, Tally], args: argparse.Namespace) -> None:
    attempts = sum(t.runs for t in tallies.values())
    print(
        f"{attempts} signalled runs for {args.runs} interrupts, {args.hogs} busy-looping processes beside, seed {args.seed}"
    )
    print(f"{'command':>8} {'alone s':>8} {'runs':>5} {'interrupted':>11} {'finished':>8} {'failures':>8}")
    for command in commands:
        tally = tallies[command.name]
        print(
            f"{command.name:>8} {command.seconds:8.2f} {tally.runs:5d} {tally.interrupted:11d} "
            f"{tally.finished_first:8d} {len(tally.failures):8d}"
        )
        for failure in tally.failures[:10]:
            print(f"    {failure}")
    summary = {
        "interrupts_wanted": args.runs,
        "signalled_runs": attempts,
        "hogs": args.hogs,
        "commands": {
            c.name: {
                "seconds_alone": round(c.seconds, 2),
                "runs": tallies[c.name].runs,
                "interrupted": tallies[c.name].interrupted,
                "finished_before_signal": tallies[c.name].finished_first,
                "failures": tallies[c.name].failures,
            }
            for c in commands
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
