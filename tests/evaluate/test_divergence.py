"""KL divergence and the other reference statistics, checked against a direct float64 numpy computation
from logits llama.cpp returns when each window is decoded on its own (no batching of windows, no cached
hidden states, no rebuilt logits), and the properties any divergence must have."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant import api
from phiquant.evaluate.evaluation import tokenize_text
from phiquant.evaluate.files import describe
from phiquant.evaluate.options import EvalOptions
from phiquant.runtime.loader import load_model

CTX = 512
WINDOWS = 6


def direct_logits(path, tokens: np.ndarray) -> np.ndarray:
    """(windows, scored positions, vocab) float64: each window decoded alone, as the runtime's plain
    decode does, keeping positions ctx/2 .. ctx-2."""
    first = CTX // 2
    out = []
    with load_model(path) as model, model.new_context(CTX) as context:
        for i in range(WINDOWS):
            context.clear()
            logits = context.decode(tokens[i * CTX : (i + 1) * CTX].tolist(), all_logits=True)
            out.append(logits[first : CTX - 1].astype(np.float64))
    return np.stack(out)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    peak = logits.max(axis=-1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))


def direct_statistics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    lp, lq = log_softmax(reference), log_softmax(candidate)
    p = np.exp(lp)
    kld = (p * (lp - lq)).sum(axis=-1).ravel()
    top = reference.argmax(-1)
    same_top = (candidate.argmax(-1) == top).ravel()
    pick = lambda a, idx: np.take_along_axis(a, idx[..., None], axis=-1)[..., 0].ravel()  # noqa: E731
    dp_top = np.exp(pick(lq, top)) - np.exp(pick(lp, top))
    nll_p, nll_q = -pick(lp, targets), -pick(lq, targets)
    return {
        "kld_mean": kld.mean(),
        "kld_median": np.median(kld),
        "kld_p99": np.percentile(kld, 99),
        "kld_max": kld.max(),
        "same_top": same_top.mean(),
        "dp_top_mean": dp_top.mean(),
        "dp_top_rms": np.sqrt((dp_top**2).mean()),
        "ppl_ratio": np.exp(nll_q.mean() - nll_p.mean()),
        "dp_target_mean": (np.exp(-nll_q) - np.exp(-nll_p)).mean(),
    }


@pytest.fixture(scope="module")
def evaluation(ladder, eval_text):
    files = [ladder[t] for t in ("F16", "Q8_0", "Q4_K_M", "Q2_K")]
    return api.evaluate(
        files, text=eval_text, options=EvalOptions(ctx=CTX, max_windows=WINDOWS, speed_runs=0)
    )


def by_type(evaluation):
    return {f.type: f for f in evaluation.files}


@pytest.mark.slow
def test_a_file_against_itself_has_zero_divergence_at_every_token(evaluation, ladder) -> None:
    reference = by_type(evaluation)["F16"]
    assert evaluation.reference == ladder["F16"] and reference.is_reference
    d = reference.divergence
    assert (d.kld_mean, d.kld_median, d.kld_p99, d.kld_max) == (0.0, 0.0, 0.0, 0.0)
    assert d.same_top == 1.0 and d.dp_top_rms == 0.0 and d.ppl_ratio == 1.0


@pytest.mark.slow
def test_divergence_grows_as_bits_shrink(evaluation) -> None:
    files = by_type(evaluation)
    kld = {t: files[t].divergence.kld_mean for t in ("Q8_0", "Q4_K_M", "Q2_K")}
    assert 0 < kld["Q8_0"] < kld["Q4_K_M"] < kld["Q2_K"]
    assert files["Q8_0"].divergence.same_top > files["Q2_K"].divergence.same_top


@pytest.mark.slow
@pytest.mark.parametrize("file_type", ["Q8_0", "Q2_K"])
def test_statistics_equal_a_direct_numpy_computation_from_logits(evaluation, ladder, file_type) -> None:
    text = evaluation.text.path.read_text(encoding="utf-8")
    tokens, adds_bos, _ = tokenize_text(describe(ladder["F16"]), text)
    assert not adds_bos
    targets = np.stack([tokens[i * CTX + CTX // 2 + 1 : (i + 1) * CTX] for i in range(WINDOWS)])
    expected = direct_statistics(
        direct_logits(ladder["F16"], tokens), direct_logits(ladder[file_type], tokens), targets
    )
    measured = by_type(evaluation)[file_type].divergence
    worst = max(abs(getattr(measured, n) / v - 1) for n, v in expected.items() if v)
    print(
        f"{file_type}: mean KLD {measured.kld_mean:.6g} (direct {expected['kld_mean']:.6g}), largest relative difference {worst:.2e}"
    )
    for name, value in expected.items():
        assert getattr(measured, name) == pytest.approx(value, rel=1e-5, abs=1e-9), name
