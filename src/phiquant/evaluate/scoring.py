"""Per-token scores from logits: what each scored token costs a file, and how far it is from the reference.

Everything is exact over the whole vocabulary (no top-k, no truncated tail).  Rows are processed a few at
a time so the vocabulary-wide temporaries stay in the CPU cache, and the reference's softmax of a chunk
is computed once for every file compared against it.

For one position with reference logits r and candidate logits c (log-sum-exp L(.), p = softmax(r)):
    nll       = L(c) - c[target]                   (natural log; perplexity = exp(mean nll))
    KLD       = KL(p || softmax(c)), in nats       (see below)
    same top  = argmax c == argmax r
    dp top    = softmax(c)[argmax r] - p[argmax r]  (the issue's "probability of the reference's top token")
    dp target = exp(-nll_c) - exp(-nll_r)           (llama.cpp's Δp: the probability of the right token)

KLD without cancellation.  With d = r - c, KL = E_p[d] - (L(r) - L(c)) and L(c) - L(r) = log E_p[e^-d]; both
are unchanged when d is shifted by a constant, so take d = (r - c) - (r - c)[argmax r] and
    KL = E_p[d + expm1(-d)] + (log1p(B) - B),   B = E_p[expm1(-d)].
Every term d + expm1(-d) is >= 0 (about d^2/2), so the sum has nothing to cancel, and expm1 keeps its
precision relative to d; B is small (the shift makes it so even when p sits on one token) and
log1p(B) - B is about -B^2/2.  The textbook form, E_p[d] - (L(r) - L(c)) from two log-sum-exps, loses
about 1e-9 nats a token to exp's float32 rounding: all of the divergence of an F16 file from F32 on some
tokens, but nothing that matters once the divergence is large, so rows with |B| > PRECISE_UP_TO, or whose
candidate logits exceed the reference's by more than EXP_LIMIT (a broken file), use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ROWS_PER_CHUNK = 16  # 16 rows x 32064 x 4 bytes = 2 MB of temporaries: about an L2/L3 slice
EXP_LIMIT = 80.0  # e^80 fits float32 (e^88.7 does not)
# Past |B| = 0.5 the divergence is large (above ~0.1 nats) and the textbook form is exact enough, while
# E_p[d + expm1(-d)] and log1p(B) - B grow and start to cancel.
PRECISE_UP_TO = 0.5


@dataclass
class TokenScores:
    """Per scored token, in text order; the divergence fields are filled only against a reference."""

    nll: list[np.ndarray] = field(default_factory=list)  # float64
    top: list[np.ndarray] = field(default_factory=list)  # int32 argmax of the logits
    kld: list[np.ndarray] = field(default_factory=list)  # float64
    same_top: list[np.ndarray] = field(default_factory=list)  # bool
    dp_top: list[np.ndarray] = field(default_factory=list)  # float64
    dp_target: list[np.ndarray] = field(default_factory=list)  # float64

    def joined(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(frozen=True)
class _Softmax:
    """One chunk's softmax pieces: log-sum-exp (float64), argmax, and optionally p."""

    lse: np.ndarray
    top: np.ndarray
    probabilities: np.ndarray | None  # float32, summing to `total` (1 up to rounding)
    total: np.ndarray


def _softmax(logits: np.ndarray, scratch: np.ndarray, *, keep_probabilities: bool) -> _Softmax:
    top = logits.argmax(axis=1).astype(np.int32)
    peak = logits[np.arange(len(logits)), top][:, None]
    shifted = scratch[: len(logits)]
    np.subtract(logits, peak, out=shifted)
    np.exp(shifted, out=shifted)
    sums = shifted.sum(axis=1, dtype=np.float64)
    lse = peak[:, 0].astype(np.float64) + np.log(sums)
    probabilities, total = None, np.ones(len(logits))
    if keep_probabilities:
        probabilities = shifted / sums[:, None].astype(np.float32)
        total = probabilities.sum(axis=1, dtype=np.float64)
    return _Softmax(lse, top, probabilities, total)


def _divergence(
    r: np.ndarray, c: np.ndarray, base: _Softmax, own: _Softmax, d: np.ndarray, e: np.ndarray
) -> np.ndarray:
    """KL(softmax(r) || softmax(c)) per row, float64 (module docstring)."""
    n = len(r)
    d, e = d[:n], e[:n]
    p = base.probabilities
    assert p is not None
    np.subtract(r, c, out=d)
    shift = d[np.arange(n), base.top].astype(np.float64)
    d -= shift.astype(np.float32)[:, None]
    mean_d = np.einsum("ij,ij->i", p, d).astype(np.float64) / base.total
    textbook = mean_d + shift - (base.lse - own.lse)
    np.negative(d, out=e)
    overflow = e.max(axis=1) > EXP_LIMIT
    np.minimum(e, EXP_LIMIT, out=e)
    np.expm1(e, out=e)
    b = np.einsum("ij,ij->i", p, e).astype(np.float64) / base.total
    np.add(d, e, out=d)
    precise = np.einsum("ij,ij->i", p, d).astype(np.float64) / base.total + (np.log1p(b) - b)
    return np.where(overflow | (np.abs(b) > PRECISE_UP_TO), textbook, precise)


def _picked(logits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return logits[np.arange(len(logits)), columns].astype(np.float64)


def score_batch(
    candidates: Sequence[np.ndarray],
    targets: np.ndarray,
    reference: np.ndarray | None,
    scores: Sequence[TokenScores],
    reference_scores: TokenScores | None = None,
) -> None:
    """Score rows of logits ((n, vocab) float32 each) for the tokens `targets` (n,), appending to
    `scores` (one per candidate) and, when given, the reference's own scores to `reference_scores`."""
    n_rows, n_vocab = candidates[0].shape if candidates else reference.shape  # type: ignore[union-attr]
    scratch = np.empty((ROWS_PER_CHUNK, n_vocab), dtype=np.float32)
    difference = np.empty((ROWS_PER_CHUNK, n_vocab), dtype=np.float32)
    for start in range(0, n_rows, ROWS_PER_CHUNK):
        rows = slice(start, min(start + ROWS_PER_CHUNK, n_rows))
        wanted = targets[rows]
        base = None
        if reference is not None:
            r = reference[rows]
            base = _softmax(r, scratch, keep_probabilities=True)
            base_nll = base.lse - _picked(r, wanted)
            if reference_scores is not None:
                reference_scores.nll.append(base_nll)
                reference_scores.top.append(base.top)
        for logits, into in zip(candidates, scores):
            c = logits[rows]
            own = _softmax(c, scratch, keep_probabilities=False)
            nll = own.lse - _picked(c, wanted)
            into.nll.append(nll)
            into.top.append(own.top)
            if base is None:
                continue
            assert base.probabilities is not None and reference is not None
            into.kld.append(_divergence(reference[rows], c, base, own, difference, scratch))
            into.same_top.append(own.top == base.top)
            p_top_candidate = np.exp(_picked(c, base.top) - own.lse)
            p_top_reference = np.exp(_picked(reference[rows], base.top) - base.lse)
            into.dp_top.append(p_top_candidate - p_top_reference)
            into.dp_target.append(np.exp(-nll) - np.exp(-base_nll))
