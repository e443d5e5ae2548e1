"""Per-token scores against a float64 computation written from the definitions (scipy-style
log-softmax), including the nearly identical distributions where float32 cancellation would show."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.evaluate.scoring import ROWS_PER_CHUNK, TokenScores, reference_rows, score_rows

VOCAB = 32064


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    return x - peak - np.log(np.exp(x - peak).sum(axis=1, keepdims=True))


def logits_pair(rows: int, scale: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = (rng.standard_normal((rows, VOCAB)) * scale).astype(np.float32)
    candidate = (reference + rng.standard_normal((rows, VOCAB)) * noise).astype(np.float32)
    return reference, candidate


# (scale of the logits, size of the quantization-like perturbation): flat to peaked, tiny to large loss
CASES = [(1.0, 1e-4), (3.0, 1e-3), (8.0, 0.05), (3.0, 1.0), (20.0, 0.5)]


@pytest.mark.parametrize(("scale", "noise"), CASES)
def test_scores_equal_the_float64_definitions(scale: float, noise: float) -> None:
    rows = ROWS_PER_CHUNK * 2 + 5  # whole chunks and a partial one
    reference, candidate = logits_pair(rows, scale, noise, seed=int(scale * 10 + noise * 1000))
    targets = np.random.default_rng(1).integers(0, VOCAB, size=rows)
    scores = TokenScores()
    base = reference_rows(reference, targets)
    score_rows(candidate, targets, base, scores)

    lp, lq = log_softmax64(reference), log_softmax64(candidate)
    p = np.exp(lp)
    kld = (p * (lp - lq)).sum(axis=1)
    rows_index = np.arange(rows)
    top = reference.argmax(axis=1)
    np.testing.assert_allclose(scores.joined("nll"), -lq[rows_index, targets], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(base.nll, -lp[rows_index, targets], rtol=1e-6, atol=1e-6)
    assert base.top.tolist() == top.tolist()
    np.testing.assert_allclose(base.probabilities, np.exp(lp), rtol=1e-6, atol=1e-12)
    # Relative accuracy even when the divergence is 5e-9 nats per token (noise 1e-4): measured 2e-4 there,
    # 3e-5 and better from 1e-4 nats up.
    np.testing.assert_allclose(scores.joined("kld"), kld, rtol=5e-4, atol=0)
    assert scores.joined("same_top").tolist() == (candidate.argmax(axis=1) == top).tolist()
    np.testing.assert_allclose(
        scores.joined("dp_top"), np.exp(lq[rows_index, top]) - np.exp(lp[rows_index, top]), atol=1e-7
    )
    np.testing.assert_allclose(
        scores.joined("dp_target"),
        np.exp(lq[rows_index, targets]) - np.exp(lp[rows_index, targets]),
        atol=1e-7,
    )


def test_a_candidate_with_logits_far_above_the_reference_still_scores_exactly() -> None:
    """A broken file (a logit 200 nats above the reference's): exp would overflow float32 in the
    cancellation-free form, so those rows take the textbook form."""
    reference, candidate = logits_pair(20, 3.0, 0.1, seed=7)
    candidate[::3, 11] = reference[::3, 11] + 200
    scores = TokenScores()
    targets = np.zeros(20, dtype=np.int64)
    score_rows(candidate, targets, reference_rows(reference, targets), scores)
    lp, lq = log_softmax64(reference), log_softmax64(candidate)
    expected = (np.exp(lp) * (lp - lq)).sum(axis=1)
    assert np.isfinite(scores.joined("kld")).all()
    np.testing.assert_allclose(scores.joined("kld"), expected, rtol=1e-5)


def test_identical_logits_score_exactly_zero_divergence() -> None:
    reference, _ = logits_pair(40, 5.0, 0.0, seed=3)
    scores = TokenScores()
    targets = np.zeros(40, dtype=np.int64)
    score_rows(reference.copy(), targets, reference_rows(reference, targets), scores)
    assert not scores.joined("kld").any() and not scores.joined("dp_top").any()
    assert scores.joined("same_top").all()


def test_reference_rows_are_shared_by_several_candidates() -> None:
    reference, first = logits_pair(20, 3.0, 0.01, seed=4)
    _, second = logits_pair(20, 3.0, 0.3, seed=5)
    targets = np.arange(20)
    shared = reference_rows(reference, targets)
    for logits in (first, second):
        alone, together = TokenScores(), TokenScores()
        score_rows(logits, targets, reference_rows(reference, targets), alone)
        score_rows(logits, targets, shared, together)
        assert np.array_equal(alone.joined("kld"), together.joined("kld"))


def test_without_a_reference_only_perplexity_scores_are_made() -> None:
    _, candidate = logits_pair(10, 2.0, 0.1, seed=6)
    scores = TokenScores()
    score_rows(candidate, np.arange(10), None, scores)
    assert len(scores.joined("nll")) == 10 and not scores.kld
