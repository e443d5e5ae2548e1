"""Loading a GGUF safely: keep llama.cpp's fast CPU paths where they work, never crash where they don't.

llama.cpp moves quantized weights into "extra" CPU buffer types (AMX tiles, repacked Q4_0/Q4_K
layouts) for faster matrix products.  On some CPUs the AMX kernels crash with SIGSEGV on every
quantized model; loading with `use_extra_bufts = false` avoids them, at the cost of the faster
paths everywhere.  So phiquant asks the machine: the first time a kind of model is loaded, a
child process loads a model with extra buffers and evaluates a few tokens.  If the child dies, extra
buffers stay off; if it lives, they stay on.  The verdict is cached per CPU, llama.cpp version and
set of tensor types.  The child evaluates a tiny model with the same tensor types, not the user's
model, so probing costs a second even for a 14B file.  PHIQUANT_EXTRA_BUFTS=0 or 1 overrides it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from phiquant import temporary_files
from phiquant.cache import RUNTIME_PROBE, sub_cache
from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel, LoadOptions

PROBE_TIMEOUT_SECONDS = 300
ENV_OVERRIDE = "PHIQUANT_EXTRA_BUFTS"


@dataclass(frozen=True)
class ProbeVerdict:
    use_extra_bufts: bool
    reason: str


def cpu_fingerprint() -> str:
    description = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        description += "".join(sorted(set(lines)))
    except OSError:
        pass
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def probe_key(tensor_types: set[int]) -> str:
    types = ",".join(str(t) for t in sorted(tensor_types))
    return f"{llama_cpp.__version__}|{cpu_fingerprint()}|{types}"


def decide_extra_bufts(path: Path) -> ProbeVerdict:
    return verdict_for_types({t.ggml_type for t in read_gguf(path).tensors})


def verdict_for_types(types: set[int]) -> ProbeVerdict:
    """decide_extra_bufts for a model with these tensor types (a caller that has read its header)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override in ("0", "1"):
        return ProbeVerdict(override == "1", f"{ENV_OVERRIDE}={override}")
    if types <= {0, 1, 30}:  # F32/F16/BF16 weights never take the AMX or repack paths
        return ProbeVerdict(True, "unquantized model")
    key = probe_key(types)
    cache_file = sub_cache(RUNTIME_PROBE) / "verdicts.json"
    cached = _read_cache(cache_file)
    if key in cached:
        return ProbeVerdict(bool(cached[key]), "cached probe")
    verdict = run_probe(probe_file(types))
    cached[key] = verdict.use_extra_bufts
    _write_cache(cache_file, cached)
    return verdict


def probe_file(types: set[int]) -> Path:
    """A tiny model with the same tensor types (runtime.probe_model), made once per type set."""
    from phiquant.runtime.probe_model import write_probe_model

    name = "probe-" + "-".join(str(t) for t in sorted(types)) + ".gguf"
    path = sub_cache(RUNTIME_PROBE) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_probe_model(path, types)
    return path


def probe_command(path: Path) -> list[str]:
    """The child process that loads `path` with extra buffer types (this module's __main__)."""
    return [sys.executable, "-m", "phiquant.runtime.loader", str(path)]


def run_probe(path: Path) -> ProbeVerdict:
    command = probe_command(path)
    # The child must import this very phiquant, installed or not (a source checkout on sys.path).
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    )
    try:
        completed = subprocess.run(
            command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeVerdict(False, "probe with extra buffer types timed out")
    if completed.returncode == 0:
        return ProbeVerdict(True, "probe passed")
    if completed.returncode < 0:
        name = signal.Signals(-completed.returncode).name
        return ProbeVerdict(False, f"probe with extra buffer types died with {name}")
    return ProbeVerdict(False, f"probe with extra buffer types failed (exit {completed.returncode})")


def _read_cache(file: Path) -> dict[str, bool]:
    try:
        data = json.loads(file.read_text())
        return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(file: Path, data: dict[str, bool]) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary_files.write_text(file, json.dumps(data, indent=1))
    except OSError:
        pass  # a read-only cache only costs a probe next time


def load_model(
    path: str | Path, *, n_gpu_layers: int = 0, verdict: ProbeVerdict | None = None
) -> LoadedModel:
    """Load a GGUF for inference with the fastest CPU paths this machine survives (`verdict`: the file's
    decide_extra_bufts, for a caller loading it again and again)."""
    path = Path(path)
    verdict = verdict or decide_extra_bufts(path)
    model = LoadedModel(path, LoadOptions(n_gpu_layers=n_gpu_layers, use_extra_bufts=verdict.use_extra_bufts))
    model.extra_bufts_reason = verdict.reason
    return model


def _probe_main(path: str) -> int:
    """Child process: load with extra buffer types and evaluate a few tokens."""
    with LoadedModel(path, LoadOptions(use_extra_bufts=True)) as model, model.new_context(64) as context:
        tokens = [t % model.n_vocab for t in range(1, 17)]
        context.decode(tokens, all_logits=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_probe_main(sys.argv[1]))
