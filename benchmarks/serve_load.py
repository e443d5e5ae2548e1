"""Benchmark: concurrent streaming chats against `phiquant serve`, and its memory across rounds.

    python benchmarks/serve_load.py [MODEL] [--streams 32] [--parallel 4] [--rounds 3] [--max-tokens 48]

MODEL defaults to the bundled model (or, before it ships, the random Phi-3.5-mini test fixture).
Each round sends every request at once, streamed; each answer is checked against the same request
answered alone.  Prints a table (seconds, tokens/s, server RSS after the round), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.fixtures.bundled_model import bundled_model_dir  # noqa: E402
from tests.server.load_scenario import expected_answers, load_requests, streaming_round  # noqa: E402
from tests.server.server_process import running_server  # noqa: E402


def fixture_model(directory: Path) -> Path:
    from tests.fixtures.phi3_specs import PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    from phiquant import api

    return api.convert(
        build_phi3_checkpoint(directory / "checkpoint", PHI35_MINI), directory / "phi35.gguf", "f16"
    ).path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", help="GGUF file or Hugging Face directory")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model) if args.model else bundled_model_dir() or fixture_model(Path(scratch))
        flags = ("--parallel", str(args.parallel), "--max-queue", str(args.streams))
        with running_server(model, *flags, cache=Path(scratch) / "cache", threads=args.threads) as server:
            requests = load_requests(args.streams, args.max_tokens)
            expected = expected_answers(server.client(), server.model, requests)
            rss_start = server.rss_bytes()
            rows = []
            print(
                f"{'round':>5} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'RSS MiB':>8} {'all match':>9}"
            )
            for index in range(args.rounds):
                result = streaming_round(server.base_url, server.model, requests)
                server.wait_idle()
                matches = all(r.text == e for r, e in zip(result.results, expected))
                row = {
                    "round": index + 1,
                    "seconds": round(result.seconds, 3),
                    "tokens": result.completion_tokens,
                    "tokens_per_s": round(result.completion_tokens / result.seconds, 1),
                    "rss_mib": round(server.rss_bytes() / 2**20, 1),
                    "all_match": matches,
                }
                rows.append(row)
                print(
                    f"{row['round']:>5} {row['seconds']:>8.2f} {row['tokens']:>7} {row['tokens_per_s']:>9.1f} "
                    f"{row['rss_mib']:>8.1f} {str(matches):>9}"
                )
    print(json.dumps({"model": str(model), "streams": args.streams, "parallel": args.parallel,
                      "rss_start_mib": round(rss_start / 2**20, 1), "rounds": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
