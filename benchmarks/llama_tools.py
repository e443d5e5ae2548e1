"""llama.cpp's own command-line tools, the anchors the benchmarks measure against.

    python benchmarks/llama_tools.py [TARGET ...]     # builds (once) and prints each tool's path

They are built from the llama.cpp source that the pinned llama-cpp-python release vendors, so the
anchor runs the same kernels phiquant runs through the Python binding.  The source comes from PyPI
(`pip download --no-binary`), the build goes to a cache directory (`PHIQUANT_BENCH_CACHE`, default
~/.cache/phiquant-bench) and is reused by later runs; tests never build them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # keep equal to the pin in pyproject.toml
TARGETS = ("llama-server", "llama-perplexity", "llama-gguf-split", "llama-mtmd-cli")


def cache_root() -> Path:
    return Path(os.environ.get("PHIQUANT_BENCH_CACHE", Path.home() / ".cache" / "phiquant-bench"))


def vendored_source() -> Path:
    """The llama.cpp tree inside llama-cpp-python's source distribution, downloaded once."""
    root = cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    source = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(root),
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
        ],
        check=True,
    )
    archive = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return source


def build_tools(targets: tuple[str, ...] = TARGETS) -> dict[str, Path]:
    """Configure and build the named tools (cmake reuses what is already built); their paths."""
    source = vendored_source()
    build = cache_root() / f"llama.cpp-build-{LLAMA_CPP_PYTHON}"
    binaries = {target: build / "bin" / target for target in targets}
    if all(path.is_file() for path in binaries.values()):
        return binaries
    if not (build / "CMakeCache.txt").is_file():
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DLLAMA_BUILD_TESTS=OFF",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", *targets, "-j", jobs],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return binaries


def tool(name: str) -> Path:
    return build_tools((name,))[name]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args()
    for name, path in build_tools(tuple(args.targets)).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
