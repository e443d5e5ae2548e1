"""Per-token scores from logits: what each scored token costs a file, and how far it is from the reference.

Everything is exact over the whole vocabulary (no top-k, no truncated tail).  Rows are processed a few at
a time so the vocabulary-wide temporaries stay in the CPU cache.  The reference's side of a batch
(`reference_rows`: its probabilities, log-sum-exp and top token) is computed once and shared by every
file compared against it.

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
expm1 overflows float32 (a candidate logit ~88 nats above the reference's: a broken file), use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROWS_PER_CHUNK = 16  # 16 rows x 32064 x 4 bytes = 2 MB of temporaries: about an L2/L3 slice
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
class ReferenceRows:
    """The reference's side of a batch of rows, computed once for every file scored against it."""

    logits: np.ndarray  # (n, vocab) float32
    probabilities: np.ndarray  # (n, vocab) float32 softmax, rows summing to `total` (1 up to rounding)
    total: np.ndarray  # float64
    lse: np.ndarray  # float64 log-sum-exp
    top: np.ndarray  # int32 argmax
    nll: np.ndarray  # float64, of the target tokens


def _log_sum_exp(logits: np.ndarray, shifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-sum-exp float64, argmax); leaves exp(logits - max) in `shifted`."""
    top = logits.argmax(axis=1).astype(np.int32)
    peak = logits[np.arange(len(logits)), top][:, None]
    np.subtract(logits, peak, out=shifted)
    np.exp(shifted, out=shifted)
    sums = shifted.sum(axis=1, dtype=np.float64)
    return peak[:, 0].astype(np.float64) + np.log(sums), top


def _picked(logits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return logits[np.arange(len(logits)), columns].astype(np.float64)


def reference_rows(logits: np.ndarray, targets: np.ndarray) -> ReferenceRows:
    """The reference's softmax of (n, vocab) logits, and its own scores of the `targets`."""
    n = len(logits)
    probabilities = np.empty_like(logits)
    lse, top = np.empty(n), np.empty(n, dtype=np.int32)
    for start in range(0, n, ROWS_PER_CHUNK):
        rows = slice(start, min(start + ROWS_PER_CHUNK, n))
        lse[rows], top[rows] = _log_sum_exp(logits[rows], probabilities[rows])
        probabilities[rows] /= np.exp(lse[rows] - _picked(logits[rows], top[rows])).astype(np.float32)[
            :, None
        ]
    total = probabilities.sum(axis=1, dtype=np.float64)
    return ReferenceRows(logits, probabilities, total, lse, top, lse - _picked(logits, targets))


def _divergence(
    c: np.ndarray, reference: ReferenceRows, rows: slice, own_lse: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """KL(reference || candidate) per row, float64 (module docstring), in six passes over the row."""
    n = len(c)
    minus_d, t = a[:n], b[:n]
    p, total = reference.probabilities[rows], reference.total[rows]
    np.subtract(c, reference.logits[rows], out=minus_d)
    shift = -minus_d[np.arange(n), reference.top[rows]].astype(np.float64)
    minus_d += shift.astype(np.float32)[:, None]
    # An overflow (inf, then inf - inf) only happens on the rows the fallback below recomputes.
    with np.errstate(over="ignore", invalid="ignore"):
        np.expm1(minus_d, out=t)
        expm1_mean = np.einsum("ij,ij->i", p, t).astype(np.float64) / total
        np.subtract(t, minus_d, out=t)  # d + expm1(-d), >= 0
        t_mean = np.einsum("ij,ij->i", p, t).astype(np.float64) / total
        precise = t_mean + (np.log1p(expm1_mean) - expm1_mean)
        textbook = (t_mean - expm1_mean) + shift - (reference.lse[rows] - own_lse)
    fallback = ~np.isfinite(precise) | (np.abs(expm1_mean) > PRECISE_UP_TO)
    if fallback.any():
        # A candidate logit far above the reference's overflowed expm1: recompute E_p[d] directly there.
        np.subtract(reference.logits[rows][fallback], c[fallback], out=minus_d[: fallback.sum()])
        mean_d = np.einsum("ij,ij->i", p[fallback], minus_d[: fallback.sum()]).astype(np.float64)
        textbook[fallback] = mean_d / total[fallback] - (reference.lse[rows][fallback] - own_lse[fallback])
    return np.where(fallback, textbook, precise)


def score_rows(
    logits: np.ndarray, targets: np.ndarray, reference: ReferenceRows | None, scores: TokenScores
) -> None:
    """Score (n, vocab) float32 logits for the next tokens `targets` (n,), against the reference's rows
    when given, appending to `scores`."""
    n, n_vocab = logits.shape
    shifted = np.empty((ROWS_PER_CHUNK, n_vocab), dtype=np.float32)
    difference = np.empty((ROWS_PER_CHUNK, n_vocab), dtype=np.float32)
    for start in range(0, n, ROWS_PER_CHUNK):
        rows = slice(start, min(start + ROWS_PER_CHUNK, n))
        c = logits[rows]
        lse, top = _log_sum_exp(c, shifted[: len(c)])
        nll = lse - _picked(c, targets[rows])
        scores.nll.append(nll)
        scores.top.append(top)
        if reference is None:
            continue
        reference_top = reference.top[rows]
        scores.kld.append(_divergence(c, reference, rows, lse, difference, shifted))
        scores.same_top.append(top == reference_top)
        p_top = np.exp(_picked(c, reference_top) - lse)
        p_top_reference = np.exp(_picked(reference.logits[rows], reference_top) - reference.lse[rows])
        scores.dp_top.append(p_top - p_top_reference)
        scores.dp_target.append(np.exp(-nll) - np.exp(-reference.nll[rows]))
