"""Proof that phiquant's mmproj file equals what llama.cpp's own converter writes, on any machine with PyPI.

    python benchmarks/mmproj_parity.py [--json]

The test suite holds the comparison (tests/archs/test_phi4v.py::test_mmproj_equals_llama_cpp_converter_output:
the vendored `convert_hf_to_gguf.py --mmproj` on the Phi-4-reasoning-vision fixture against phiquant's
writer, key for key and byte for byte, F16/F32/BF16/Q8_0), but tests never download, so it skips where
llama.cpp's source is absent.  This script fetches that source once (llama-cpp-python's sdist, as
benchmarks/llama_tools.py does, into PHIQUANT_BENCH_CACHE) and runs that test with
PHIQUANT_LLAMA_CPP_SOURCE pointing at it, then prints one line per mmproj type and the verdict.
Exits 0 when every type passed, 1 otherwise (a skip counts as a failure here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks.llama_tools import vendored_source  # noqa: E402

TEST = "tests/archs/test_phi4v.py::test_mmproj_equals_llama_cpp_converter_output"


def run_comparison(source: Path, report: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PHIQUANT_LLAMA_CPP_SOURCE"] = str(source)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", TEST]
    return subprocess.run(
        [*command, f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def outcomes(report: Path) -> dict[str, str]:
    """Each test case's outcome from pytest's JUnit report: passed, failed, error or skipped."""
    results = {}
    for case in ElementTree.parse(report).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        results[case.get("name", "?")] = {"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args()
    source = vendored_source()
    with tempfile.TemporaryDirectory(prefix="mmproj-parity-") as scratch:
        report = Path(scratch) / "report.xml"
        run = run_comparison(source, report)
        results = outcomes(report) if report.is_file() else {}
    passed = bool(results) and all(outcome == "passed" for outcome in results.values())
    if args.json:
        print(json.dumps({"source": str(source), "test": TEST, "cases": results, "passed": passed}))
    else:
        print(f"llama.cpp source: {source}")
        for name, outcome in results.items():
            print(f"  {name}: {outcome}")
        verdict = "PASS" if passed else "FAIL"
        print(f"{verdict}: phiquant's mmproj vs convert_hf_to_gguf.py --mmproj ({TEST})")
    if not passed:
        print(run.stdout[-4000:] + run.stderr[-2000:], file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
