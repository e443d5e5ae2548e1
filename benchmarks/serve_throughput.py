"""Benchmark: `phiquant serve` against llama.cpp's llama-server, same GGUF, threads and requests.

    python benchmarks/serve_throughput.py [--model GGUF] [--levels 1,4,8,16] [--parallel 8]
        [--threads 2] [--max-tokens 64] [--turns 10] [--gpu-layers 0|auto]

Without --model it makes (once, cached under ~/.cache/phiquant-bench/serve-throughput) a Q4_K_M of a
~270M-parameter random-weight checkpoint with Phi-3.5-mini's layout (LongRoPE, original context 4096);
--small makes a ~60M one instead.  For each server, one after the other on the same machine:
aggregate completion tokens/s and p50/p95 time to first token with 1, 4, 8 and 16 concurrent
streaming clients (each client sends its requests back to back; end tokens are banned so every
request generates exactly --max-tokens), then the time to first token of the last turn of a 10-turn
conversation, sent once after its earlier turns (prompt reuse) and once cold (the same prompt after
the cache was filled with other conversations).  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import httpx  # noqa: E402
import openai  # noqa: E402

from benchmarks.llama_tools import build_tools, cache_root  # noqa: E402

TOPICS = ["lists", "tuples", "dicts", "sets", "strings", "bytes", "files", "classes", "generators"]


def benchmark_model(small: bool) -> Path:
    """The Q4_K_M GGUF of a random Phi-3.5-layout checkpoint, made once."""
    from tests.fixtures.phi3_specs import PHI35_MINI
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    from phiquant import api

    name = "phi35-60m" if small else "phi35-270m"
    work = cache_root() / "serve-throughput" / name
    gguf = work / f"{name}-Q4_K_M.gguf"
    if gguf.is_file():
        return gguf
    # hidden 1024, 16 layers, 16 heads (head_dim 64 as PHI35_MINI's 32 LongRoPE factors need),
    # intermediate 2816: 271M parameters with the 32064-token vocabulary.
    shape = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=8) if small else dict(hidden_size=1024, intermediate_size=2816,
                 num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16)  # fmt: skip
    spec = dataclasses.replace(
        PHI35_MINI, max_position_embeddings=131072, original_max_position_embeddings=4096, **shape
    )
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        build_phi3_checkpoint(checkpoint, spec, shards=1)
    result = api.quantize(checkpoint, ["Q4_K_M"], work)
    produced = Path(result.files[0].path)
    produced.rename(gguf)
    return gguf


@dataclasses.dataclass
class Server:
    name: str
    url: str  # ending in /v1
    model: str
    process: subprocess.Popen[bytes]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def phiquant_server(model: Path, args: argparse.Namespace, scratch: Path, port: int) -> Any:
    log = scratch / "phiquant.log"
    command = [sys.executable, "-m", "phiquant", "serve", str(model), "--port", str(port), "--threads",
               str(args.threads), "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--max-queue",
               "64", "--gpu-layers", args.gpu_layers, "--model-alias", "bench"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PHIQUANT_CACHE": str(scratch / "cache")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process, log)
        yield Server("phiquant", f"http://127.0.0.1:{port}/v1", "bench", process)
    finally:
        process.terminate()
        process.wait(60)


@contextlib.contextmanager
def llama_server(model: Path, args: argparse.Namespace, scratch: Path, port: int) -> Any:
    binary = build_tools(("llama-server",))["llama-server"]
    log = scratch / "llama-server.log"
    gpu = "999" if args.gpu_layers == "auto" else args.gpu_layers
    # The same per-slot context as phiquant's (one KV stream of --ctx tokens per slot: -c is the total).
    command = [str(binary), "-m", str(model), "--port", str(port), "-t", str(args.threads), "-tb",
               str(args.threads), "-np", str(args.parallel), "-c", str(args.ctx * args.parallel), "-ngl", gpu,
               "--alias", "bench", "--no-webui"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process, log)
        yield Server("llama-server", f"http://127.0.0.1:{port}/v1", "bench", process)
    finally:
        process.terminate()
        process.wait(60)


def question(client: int, turn: int) -> str:
    return f"Client {client}, question {turn}: what should I know about Python {TOPICS[(client + turn) % 9]}?"


@dataclasses.dataclass
class Reply:
    ttft: float  # seconds to the first content
    tokens: int
    text: str
    cached: int | None  # usage.prompt_tokens_details.cached_tokens, where the server reports it


async def _one_request(
    api: openai.AsyncOpenAI,
    server: Server,
    messages: list[dict[str, str]],
    max_tokens: int,
    ban: dict[str, int],
) -> Reply:
    """One streamed chat."""
    started = time.perf_counter()
    first = None
    pieces = []
    tokens = 0
    cached = None
    stream = await api.chat.completions.create(
        model=server.model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, logit_bias=ban,
    )  # fmt: skip
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
            details = chunk.usage.prompt_tokens_details
            cached = details.cached_tokens if details is not None else None
        for choice in chunk.choices:
            if choice.delta.content:
                first = first if first is not None else time.perf_counter() - started
                pieces.append(choice.delta.content)
    ttft = first if first is not None else time.perf_counter() - started
    return Reply(ttft, tokens, "".join(pieces), cached)


async def _load_level(
    server: Server, clients: int, requests_each: int, max_tokens: int, ban: dict[str, int]
) -> dict[str, Any]:
    async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=900) as api:

        async def client(index: int) -> list[Reply]:
            return [
                await _one_request(
                    api, server, [{"role": "user", "content": question(index, turn)}], max_tokens, ban
                )
                for turn in range(requests_each)
            ]

        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(i) for i in range(clients))) for r in rs]
        seconds = time.perf_counter() - started
    ttft = sorted(r.ttft for r in results)
    tokens = sum(r.tokens for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
        "ttft_p95_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 1),
    }


async def _conversation(
    server: Server, turns: int, max_tokens: int, ban: dict[str, int], filler: int
) -> dict[str, Any]:
    """Time to first token of the last turn: after the earlier turns (warm), and cold (the same
    prompt again after `filler` other requests took every sequence)."""
    async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=900) as api:
        messages: list[dict[str, str]] = []
        for turn in range(turns):
            messages.append({"role": "user", "content": question(99, turn) + " Explain it with an example."})
            warm = await _one_request(api, server, messages, max_tokens, ban)
            messages.append({"role": "assistant", "content": warm.text})
        last = messages[:-1]
        for round_ in range(2):  # every slot's cache taken by unrelated prompts, all at once
            fillers = [
                [{"role": "user", "content": question(200 + round_ * filler + i, 0) * 8}]
                for i in range(filler)
            ]
            await asyncio.gather(*(_one_request(api, server, f, 4, ban) for f in fillers))
        cold = await _one_request(api, server, last, max_tokens, ban)
    return {"turns": turns, "warm_ttft_ms": round(1000 * warm.ttft, 1), "warm_cached_tokens": warm.cached,
            "cold_ttft_ms": round(1000 * cold.ttft, 1), "cold_cached_tokens": cold.cached,
            "warm_over_cold": round(warm.ttft / cold.ttft, 3)}  # fmt: skip


def end_token_bias(model: Path) -> dict[str, int]:
    from phiquant.runtime.llama import LoadedModel, LoadOptions

    with LoadedModel(model, LoadOptions(vocab_only=True)) as vocab:
        return {str(i): -100 for i in range(vocab.n_vocab) if vocab.is_end_of_generation(i)}


def measure(servers: list[Server], args: argparse.Namespace, ban: dict[str, int]) -> dict[str, Any]:
    """Every level on each server in turn, the order swapped from one level to the next, so that a
    change in the shared machine's load falls on both."""
    results: dict[str, Any] = {s.name: {"levels": []} for s in servers}
    for server in servers:
        asyncio.run(_load_level(server, 1, 1, 8, ban))  # warm-up
    for index, clients in enumerate(args.levels):
        for server in servers if index % 2 == 0 else servers[::-1]:
            level = asyncio.run(_load_level(server, clients, args.requests_per_client, args.max_tokens, ban))
            results[server.name]["levels"].append(level)
            print(server.name, json.dumps(level), file=sys.stderr, flush=True)
    for server in servers:
        conversation = asyncio.run(_conversation(server, args.turns, args.turn_tokens, ban, args.parallel))
        results[server.name]["conversation"] = conversation
        print(server.name, json.dumps(conversation), file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: the 270M Phi-3.5-layout Q4_K_M)")
    parser.add_argument("--small", action="store_true", help="the ~60M model instead of the 270M one")
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--parallel", type=int, default=8, help="slots of both servers")
    parser.add_argument("--ctx", type=int, default=2048, help="tokens per slot")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--turn-tokens", type=int, default=48, help="max_tokens of each conversation turn")
    parser.add_argument("--gpu-layers", default="0")
    parser.add_argument("--only", choices=["phiquant", "llama-server"])
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    model = args.model or benchmark_model(args.small)
    ban = end_token_bias(model)
    results: dict[str, Any] = {"model": str(model), "threads": args.threads, "parallel": args.parallel,
                               "ctx": args.ctx, "max_tokens": args.max_tokens}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(start(model, args, Path(scratch), port))
            for port, (name, start) in enumerate(
                (("phiquant", phiquant_server), ("llama-server", llama_server)), 18470
            )
            if args.only in (None, name)
        ]
        results |= measure(servers, args, ban)
    print_table(results)
    print(json.dumps(results))


def print_table(results: dict[str, Any]) -> None:
    names = [n for n in ("phiquant", "llama-server") if n in results]
    print(f"{'server':>14} {'clients':>7} {'tokens/s':>9} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    for name in names:
        for level in results[name]["levels"]:
            print(f"{name:>14} {level['clients']:>7} {level['tokens_per_s']:>9.1f} {level['ttft_p50_ms']:>12.1f} "
                  f"{level['ttft_p95_ms']:>12.1f}")  # fmt: skip
    if len(names) == 2:
        for mine, theirs in zip(results["phiquant"]["levels"], results["llama-server"]["levels"]):
            print(
                f"ratio at {mine['clients']:>2} clients: {mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}x"
            )
    for name in names:
        conversation = results[name]["conversation"]
        print(f"{name}: {conversation['turns']}-turn conversation, last turn TTFT warm "
              f"{conversation['warm_ttft_ms']} ms, cold {conversation['cold_ttft_ms']} ms "
              f"({conversation['warm_over_cold']}x)")  # fmt: skip


if __name__ == "__main__":
    main()
