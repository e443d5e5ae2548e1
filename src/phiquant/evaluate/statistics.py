"""Per-token scores summed up into the figures a report shows, with llama.cpp's uncertainty estimates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phiquant.evaluate.scoring import TokenScores


@dataclass(frozen=True)
class Perplexity:
    value: float  # exp(mean negative log-likelihood)
    uncertainty: float  # PPL x standard error of the mean nll (llama-perplexity's "+/-")
    mean_nll: float
    n_tokens: int


@dataclass(frozen=True)
class Divergence:
    """How far a file's next-token distributions are from the reference's (natural logs throughout)."""

    kld_mean: float
    kld_mean_uncertainty: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: float  # fraction of tokens whose most likely next token is the reference's
    dp_top_mean: float  # change in the probability of the reference's top token
    dp_top_rms: float
    dp_target_mean: float  # change in the probability of the right token (llama.cpp's Δp)
    dp_target_rms: float
    ppl_ratio: float  # PPL(file) / PPL(reference) on the same tokens
    ln_ppl_ratio: float


def _standard_error(values: np.ndarray) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def perplexity(scores: TokenScores) -> Perplexity:
    nll = scores.joined("nll")
    mean = float(nll.mean())
    value = math.exp(mean)
    return Perplexity(value, value * _standard_error(nll), mean, len(nll))


def divergence(scores: TokenScores, reference: TokenScores) -> Divergence:
    kld = scores.joined("kld")
    dp_top = scores.joined("dp_top")
    dp_target = scores.joined("dp_target")
    ln_ratio = float(scores.joined("nll").mean() - reference.joined("nll").mean())
    return Divergence(
        kld_mean=float(kld.mean()),
        kld_mean_uncertainty=_standard_error(kld),
        kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        same_top=float(scores.joined("same_top").mean()),
        dp_top_mean=float(dp_top.mean()),
        dp_top_rms=float(np.sqrt(np.mean(dp_top**2))),
        dp_target_mean=float(dp_target.mean()),
        dp_target_rms=float(np.sqrt(np.mean(dp_target**2))),
        ppl_ratio=math.exp(ln_ratio),
        ln_ppl_ratio=ln_ratio,
    )


def uniform_perplexity(n_vocab: int) -> float:
    """What a model that learned nothing scores: every token equally likely."""
    return float(n_vocab)
