"""A bounded load test: 32 concurrent streaming chats, twice, on the bundled model.

Every stream completes, carries only its own request's tokens (its text equals the same request
answered alone), the server stays up, and its resident memory does not grow from one round to the
next.  Figures (time, tokens/s, RSS) are printed for the record, never asserted beyond the memory bound.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.bundled_model import bundled_model_dir
from tests.server.load_scenario import expected_answers, load_requests, streaming_round
from tests.server.server_process import running_server

N_STREAMS = 32
PARALLEL = 4
MAX_TOKENS = 32  # request i asks for MAX_TOKENS + i
# The bundled model's end-of-generation ids (generation_config.json's eos list and SentencePiece's
# </s>), banned so that every answer runs to its own length.
END_IDS = (2, 8000, 8001, 8007)
# RSS may move by allocator noise (a few pages per thread arena); a leak of one context, one sampler
# chain or one response per request would show as far more than this over 32 requests.
RSS_GROWTH_BOUND = 8 * 1024 * 1024


@pytest.mark.slow
def test_32_concurrent_streams_complete_uncrossed_without_memory_growth(server_cache) -> None:
    model = bundled_model_dir()
    flags = ("--parallel", str(PARALLEL), "--max-queue", str(N_STREAMS))
    with running_server(model, *flags, cache=server_cache) as server:
        requests = load_requests(N_STREAMS, MAX_TOKENS, END_IDS)
        expected = expected_answers(server.client(), server.model, requests)
        assert len(set(expected)) == N_STREAMS, "the requests must have distinct answers to detect crossing"
        rounds, rss = [], [server.rss_bytes()]
        for _ in range(3):  # the first round warms up the slots' contexts and the allocator
            result = streaming_round(server.base_url, server.model, requests)
            rounds.append(result)
            assert server.wait_idle()["slots"] == {"total": PARALLEL, "idle": PARALLEL, "waiting": 0}
            rss.append(server.rss_bytes())
            for request, stream in zip(requests, result.results):
                assert stream.finish_reason == "length", request.index
                assert stream.completion_tokens == request.max_tokens, request.index
                assert len(stream.chunk_ids) == 1, request.index
                assert stream.text == expected[request.index], request.index
        assert server.health()["status"] == "ok"
    figures = {
        "model": "bundled",
        "streams": N_STREAMS,
        "parallel": PARALLEL,
        "round_seconds": [round(r.seconds, 2) for r in rounds],
        "tokens_per_round": [r.completion_tokens for r in rounds],
        "rss_mib": [round(b / 2**20, 1) for b in rss],
    }
    print("\nload test:", json.dumps(figures))
    assert rss[3] - rss[2] < RSS_GROWTH_BOUND, figures
