"""The window layout of llama.cpp's perplexity tool (tools/perplexity/perplexity.cpp, perplexity()):
window i is tokens [i*ctx, (i+1)*ctx), BOS replaces its first token when the vocabulary adds BOS, and
logits at positions ctx/2 .. ctx-2 are scored against the token that follows each."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.evaluate.windows import TOKENS_PER_BATCH, plan_windows

BOS = 1


def llama_perplexity_layout(tokens: list[int], ctx: int, add_bos: bool) -> list[tuple[list[int], list[int]]]:
    """(window as decoded, targets of its scored logits) per window, transcribed from perplexity.cpp's loop:
    n_chunk = tokens/ctx; tokens[start] swapped for BOS during decode; first = ctx/2; process_logits
    scores n_ctx - 1 - first logits against tokens_data[i+1], tokens_data = tokens + start + first."""
    out = []
    first = ctx // 2
    for chunk in range(len(tokens) // ctx):
        start = chunk * ctx
        window = list(tokens[start : start + ctx])
        if add_bos:
            window[0] = BOS
        targets = [tokens[start + first + i + 1] for i in range(ctx - 1 - first)]
        out.append((window, targets))
    return out


@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize(("n_tokens", "ctx"), [(100, 16), (96, 33), (4096, 512), (5000, 1000)])
def test_windows_and_targets_follow_llama_perplexity(n_tokens: int, ctx: int, add_bos: bool) -> None:
    tokens = np.random.default_rng(n_tokens).integers(3, 32000, size=n_tokens).astype(np.int32)
    plan = plan_windows(tokens, ctx, adds_bos=add_bos, bos_id=BOS)
    expected = llama_perplexity_layout(tokens.tolist(), ctx, add_bos)
    assert plan.n_windows == len(expected)
    assert plan.n_scored == sum(len(t) for _, t in expected)
    windows = plan.window_tokens(0, plan.n_windows)
    targets = plan.targets(0, plan.n_windows)
    for i, (window, target) in enumerate(expected):
        assert windows[i].tolist() == window
        assert targets[i].tolist() == target
    assert tokens[0] != BOS or add_bos  # the plan never writes into the caller's tokens
    assert plan.windows_per_batch == max(1, TOKENS_PER_BATCH // ctx)


def test_batches_cover_every_window_once() -> None:
    plan = plan_windows(np.arange(10 * 256, dtype=np.int32), 256, adds_bos=False, bos_id=BOS)
    assert list(plan.batches()) == [(0, 8), (8, 10)]


def test_chunks_limit_the_windows() -> None:
    plan = plan_windows(np.arange(10 * 64, dtype=np.int32), 64, adds_bos=False, bos_id=BOS, max_windows=3)
    assert plan.n_windows == 3


def test_a_text_shorter_than_one_window_is_refused_with_its_length() -> None:
    with pytest.raises(
        PhiquantError, match=r"short.txt is 511 tokens long, shorter than one window of --ctx 512"
    ):
        plan_windows(np.arange(511, dtype=np.int32), 512, adds_bos=False, bos_id=BOS, text_name="short.txt")


@pytest.mark.parametrize("ctx", [0, 7, 15])
def test_windows_too_small_to_score_are_refused(ctx: int) -> None:
    with pytest.raises(PhiquantError, match="--ctx"):
        plan_windows(np.arange(4096, dtype=np.int32), ctx, adds_bos=False, bos_id=BOS)
