"""Perplexity from phiquant (llama.cpp through the runtime) equals transformers' on the same tokens and
windows: the issue's independent oracle.

transformers runs the Hugging Face checkpoint itself, tokenized by its own tokenizer, and the windows are
cut here from llama.cpp's rules (tools/perplexity/perplexity.cpp), not from phiquant's window code.
PHI35_MINI's original context is 256: ctx 256 runs LongRoPE's short factors, ctx 512 its long ones, in
both implementations.
"""

from __future__ import annotations

import math

import pytest
import torch

from phiquant import api
from phiquant.evaluate.evaluation import tokenize_text
from phiquant.evaluate.files import describe
from phiquant.evaluate.options import EvalOptions
from tests.fixtures.transformers_reference import load_transformers_model, load_transformers_tokenizer

WINDOWS = 4


def transformers_window_nll(model, tokens: list[int], ctx: int, n_windows: int) -> list[float]:
    """Negative log-likelihood of every scored token: window i = tokens[i*ctx:(i+1)*ctx], positions
    ctx/2 .. ctx-2 predict the next token (no BOS: this vocabulary does not add one)."""
    losses: list[float] = []
    for i in range(n_windows):
        window = tokens[i * ctx : (i + 1) * ctx]
        with torch.no_grad():
            logits = model(torch.tensor([window])).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        for position in range(ctx // 2, ctx - 1):
            losses.append(-float(log_probs[position, window[position + 1]]))
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("ctx", [256, 512], ids=["short-factors", "long-factors"])
def test_perplexity_of_f32_gguf_matches_transformers_within_one_percent(
    ctx, sharp_checkpoint, sharp_gguf, eval_text
) -> None:
    gguf = sharp_gguf("f32")
    text = eval_text.read_text(encoding="utf-8")
    tokenizer = load_transformers_tokenizer(sharp_checkpoint)
    hf_tokens = tokenizer(text, add_special_tokens=True)["input_ids"]
    llama_tokens, adds_bos, _ = tokenize_text(describe(gguf), text)
    assert not adds_bos
    assert llama_tokens.tolist() == hf_tokens  # the same tokens for both

    losses = transformers_window_nll(load_transformers_model(sharp_checkpoint), hf_tokens, ctx, WINDOWS)
    expected = math.exp(sum(losses) / len(losses))
    evaluation = api.evaluate(
        gguf, text=eval_text, options=EvalOptions(ctx=ctx, max_windows=WINDOWS, speed_runs=0)
    )
    measured = evaluation.files[0].perplexity

    assert measured.n_tokens == len(losses) == WINDOWS * (ctx - 1 - ctx // 2)
    # Random weights with a sharpened head: peaked, token-dependent distributions, far from uniform in
    # either direction, so a wrong window, target or BOS would move the perplexity by orders of magnitude.
    assert abs(math.log(expected / evaluation.uniform_perplexity)) > 2
    print(
        f"ctx {ctx}: transformers {expected:.6g}, phiquant {measured.value:.6g}, ratio {measured.value / expected:.6f}"
    )
    assert measured.value == pytest.approx(expected, rel=0.01)
