"""phiquant's split files against llama.cpp's own `llama-gguf-split` (the anchor the tests cannot run).

    python benchmarks/split_anchor.py [--model DIR] [--workdir DIR] [--tool llama-gguf-split]

For one unsplit GGUF made by phiquant from a fixture checkpoint (or --model, a checkpoint folder):

1. `llama-gguf-split --split --split-max-size` and `--split-max-tensors` on the unsplit file, and
   `phiquant convert` with the same limit: every shard byte-identical (names too);
2. `llama-gguf-split --merge` of phiquant's shards: the tensor data and every key equal the unsplit
   file's, and the header differs only by the split.* keys the merge tool leaves in (it copies the
   first shard's keys, with split.count set to 0; gguf-split.cpp gguf_merge); `phiquant merge` of the
   same shards: the unsplit file, byte for byte;
3. timings of phiquant's split convert against convert + llama-gguf-split, and of `phiquant merge`
   against `llama-gguf-split --merge`, in the same run.

Prints a JSON summary; exits 1 on any mismatch.  The tool is built once by benchmarks/llama_tools.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks.llama_tools import tool  # noqa: E402
from phiquant import api  # noqa: E402
from phiquant.gguf_io import read_gguf  # noqa: E402


def fixture_checkpoint(directory: Path) -> Path:
    from tests.fixtures.phi3_specs import PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    return build_phi3_checkpoint(directory / "checkpoint", PHI35_MINI)


def compare_split(
    gguf_split: Path, checkpoint: Path, unsplit: Path, work: Path, flag: str, value: str
) -> dict[str, object]:
    theirs_dir, ours_dir = work / f"llama{flag}", work / f"ours{flag}"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    started = time.perf_counter()
    subprocess.run(
        [str(gguf_split), "--split", flag, value, str(unsplit), str(theirs_dir / "m")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tool_seconds = time.perf_counter() - started
    option = {"split_max_size": value} if flag == "--split-max-size" else {"split_max_tensors": int(value)}
    started = time.perf_counter()
    ours = api.convert(checkpoint, ours_dir / "m.gguf", "f16", **option)  # type: ignore[arg-type]
    our_seconds = time.perf_counter() - started
    theirs = sorted(theirs_dir.glob("*.gguf"))
    names_equal = [p.name for p in theirs] == [p.name for p in ours.shards]
    bytes_equal = names_equal and all(
        a.read_bytes() == b.read_bytes() for a, b in zip(theirs, ours.shards, strict=True)
    )
    return {
        "limit": f"{flag} {value}",
        "shards": [p.name for p in ours.shards],
        "names_equal": names_equal,
        "bytes_equal": bytes_equal,
        "llama_gguf_split_seconds": round(tool_seconds, 3),
        "phiquant_split_convert_seconds": round(our_seconds, 3),
        "first_shard": str(ours.path),
    }


def compare_merge(gguf_split: Path, first_shard: Path, unsplit: Path, work: Path) -> dict[str, object]:
    merged = work / "merged.gguf"
    started = time.perf_counter()
    subprocess.run(
        [str(gguf_split), "--merge", str(first_shard), str(merged)], check=True, stdout=subprocess.DEVNULL
    )
    tool_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = api.merge(first_shard, work / "merged-by-phiquant.gguf").path
    our_seconds = time.perf_counter() - started
    a, b = read_gguf(merged), read_gguf(unsplit)
    extra_keys = [m.key for m in a.metadata if m.key not in {n.key for n in b.metadata}]
    same_keys = [m for m in a.metadata if not m.key.startswith("split.")] == b.metadata
    data_equal = merged.read_bytes()[a.data_offset :] == unsplit.read_bytes()[b.data_offset :]
    return {
        "merged_keys_beyond_unsplit": extra_keys,
        "merged_split_count": a.get("split.count"),
        "other_keys_equal": same_keys,
        "tensor_data_equal": data_equal,
        "bytes_equal": merged.read_bytes() == unsplit.read_bytes(),
        "phiquant_merge_bytes_equal": ours.read_bytes() == unsplit.read_bytes(),
        "llama_gguf_split_merge_seconds": round(tool_seconds, 3),
        "phiquant_merge_seconds": round(our_seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a Hugging Face checkpoint folder (default: a fixture)")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    parser.add_argument(
        "--tool",
        type=Path,
        help="a llama-gguf-split binary built from the vendored source (default: llama_tools)",
    )
    args = parser.parse_args()
    gguf_split = args.tool or tool("llama-gguf-split")
    with tempfile.TemporaryDirectory(prefix="phiquant-split-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.model or fixture_checkpoint(work)
        started = time.perf_counter()
        unsplit = api.convert(checkpoint, work / "whole.gguf", "f16").path
        unsplit_seconds = time.perf_counter() - started
        size_limit = str(max(t.nbytes for t in read_gguf(unsplit).tensors) // 1_000_000 + 4) + "M"
        splits = [
            compare_split(gguf_split, checkpoint, unsplit, work, "--split-max-size", size_limit),
            compare_split(gguf_split, checkpoint, unsplit, work, "--split-max-tensors", "10"),
        ]
        merge = compare_merge(gguf_split, Path(str(splits[0]["first_shard"])), unsplit, work)
        summary = {
            "machine": "see the closing note",
            "unsplit_convert_seconds": round(unsplit_seconds, 3),
            "splits": splits,
            "merge": merge,
        }
        print(json.dumps(summary, indent=2))
        ok = (
            all(s["bytes_equal"] for s in splits)
            and merge["tensor_data_equal"]
            and merge["other_keys_equal"]
            and merge["phiquant_merge_bytes_equal"]
        )
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
