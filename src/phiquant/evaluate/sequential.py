"""Sequential estimation: measure windows in a random order and stop once every answer is known well enough.

The figures a report ranks files by are means over the text's windows (every window scores the same
number of tokens, so the mean of window means is the token mean).  Tokens of one window are strongly
correlated (one topic, one passage), so the unit of sampling is the window: the standard error of a mean
comes from the spread of the window means, never from the tokens.  Windows are visited in a seeded random
order (stratified over the text: `window_order`), drawn without replacement from the text's finite set of
windows, so the standard error carries the finite-population correction sqrt(1 - n/N): once every window
is used it is 0 and the estimate is the full-text figure itself.  Intervals use Student's t with n - 1
degrees of freedom.

Stopping rule, checked after each batch of windows (the windows llama.cpp decodes together):
  * at least `min_windows` (default MIN_WINDOWS) windows are in (a spread estimated from fewer is
    itself too uncertain), and
  * every file's mean KL divergence has a relative standard error of at most `rel_error`, and
  * the ladder's order by mean KLD is settled: for each pair of neighbours in that order, the paired
    per-window difference of their KLD (the same windows for every file, so the noise largely cancels)
    excludes zero at the chosen confidence, Bonferroni-corrected over the pairs so the whole order holds
    at that confidence (unless the caller asks for each file's mean alone: `settle_order=False`);
or the text is used up.  Without a reference (perplexity only) the rule is on each file's perplexity:
the standard error of its mean log-likelihood, which is its relative error, at most `rel_error`.
The reference itself (KL divergence 0 at every token) takes no part in the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
MIN_WINDOWS = 16

WindowMeans = np.ndarray  # (windows, 3): one file's mean nll, KLD and same-top fraction per window


def window_order(n_windows: int, seed: int, strata: int = MIN_WINDOWS) -> np.ndarray:
    """The order windows are visited in, fixed by `seed`: the text is cut into `strata` runs of
    neighbouring windows, and each round takes one window at random from every run, the runs in a random
    order, so any prefix of the order spreads over the whole text (a stratified random sample).
    Neighbouring windows are alike (one document, one topic), so such a sample's mean varies less than a
    simple random sample's; the standard error is still computed as for a simple random sample, which
    then overstates it a little: the intervals are, if anything, conservative."""
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, n_windows, min(strata, n_windows) + 1).round().astype(int)
    runs = [list(rng.permutation(np.arange(start, stop))) for start, stop in zip(bounds, bounds[1:])]
    order: list[int] = []
    while len(order) < n_windows:
        for run in rng.permutation(len(runs)):
            if runs[run]:
                order.append(int(runs[run].pop()))
    return np.asarray(order, dtype=np.int64)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the Cornish-Fisher expansion around the normal quantile (no scipy at run
    time).  At the levels the rule uses (0.975 up to 0.995) it is within 0.1% of the printed tables from
    7 degrees of freedom on; the rule never uses fewer than MIN_WINDOWS - 1."""
    z = NormalDist().inv_cdf(p)
    if df <= 0:
        return math.inf
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Interval:
    """A mean over the windows used, its standard error and its confidence interval."""

    mean: float
    standard_error: float
    low: float
    high: float

    @property
    def relative_error(self) -> float:
        if self.standard_error == 0:
            return 0.0
        return self.standard_error / self.mean if self.mean > 0 else math.inf

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class FileEstimate:
    """One file's sequential figures: mean KLD, perplexity ratio and top-token agreement with intervals
    (the divergence ones None without a reference), and its perplexity's."""

    kld_mean: Interval | None
    ppl_ratio: Interval | None
    same_top: Interval | None
    perplexity: Interval


@dataclass(frozen=True)
class SequentialSummary:
    """How a sequential evaluation went: what it aimed for, what it used, why it stopped."""

    rel_error: float  # the target relative standard error of each file's mean KLD
    confidence: float  # of every interval, and of the order as a whole
    seed: int
    windows_used: int
    windows_available: int
    tokens_per_window: int
    tokens_scored: int  # per file
    stopped: str  # "settled" or "text used up"
    order_settled: bool
    order: list[int]  # file indices by mean KLD, smallest first (reference excluded)


class SequentialEstimator:
    """Window means of every file, added window by window, and whether the answer is known.

    `add_window` takes one window's means for every file: KLD (None without a reference), negative
    log-likelihood, same-top fraction, and the reference's own mean negative log-likelihood."""

    def __init__(
        self,
        n_files: int,
        windows_available: int,
        *,
        rel_error: float,
        is_reference: Sequence[bool],
        has_reference: bool,
        confidence: float = CONFIDENCE,
        min_windows: int = MIN_WINDOWS,
        settle_order: bool = True,
    ):
        self.n_files = n_files
        self.windows_available = windows_available
        self.rel_error = rel_error
        self.confidence = confidence
        self.min_windows = min_windows
        self.settle_order = settle_order
        self.has_reference = has_reference
        self.ranked = [i for i in range(n_files) if not is_reference[i]] if has_reference else []
        self._kld: list[np.ndarray] = []
        self._nll: list[np.ndarray] = []
        self._same_top: list[np.ndarray] = []
        self._reference_nll: list[float] = []

    @property
    def n_windows(self) -> int:
        return len(self._nll)

    def add_window(
        self,
        nll: Sequence[float] | np.ndarray,
        kld: Sequence[float] | np.ndarray | None = None,
        same_top: Sequence[float] | np.ndarray | None = None,
        reference_nll: float | None = None,
    ) -> None:
        self._nll.append(np.asarray(nll, dtype=np.float64))
        if self.has_reference:
            assert kld is not None and same_top is not None and reference_nll is not None
            self._kld.append(np.asarray(kld, dtype=np.float64))
            self._same_top.append(np.asarray(same_top, dtype=np.float64))
            self._reference_nll.append(reference_nll)

    # -- intervals ---------------------------------------------------------------------------------------

    def _finite_population(self) -> float:
        return max(0.0, 1.0 - self.n_windows / self.windows_available)

    def _standard_error(self, values: np.ndarray) -> float:
        n, finite = len(values), self._finite_population()
        if finite == 0:
            return 0.0  # every window measured: the mean is the full text's
        if n < 2:
            return math.inf
        return float(np.std(values, ddof=1) / math.sqrt(n) * math.sqrt(finite))

    def _quantile(self, level: float) -> float:
        return t_quantile(1 - (1 - level) / 2, max(self.n_windows - 1, 1))

    def interval(self, values: np.ndarray) -> Interval:
        mean = float(np.mean(values))
        error = self._standard_error(values)
        half = self._quantile(self.confidence) * error if error > 0 else 0.0
        return Interval(mean, error, mean - half, mean + half)

    def _column(self, rows: list[np.ndarray], file: int) -> np.ndarray:
        return np.array([row[file] for row in rows])

    def estimate(self, file: int) -> FileEstimate:
        nll = self.interval(self._column(self._nll, file))
        perplexity = _exp_interval(nll)
        if not self.has_reference:
            return FileEstimate(None, None, None, perplexity)
        log_ratio = self._column(self._nll, file) - np.asarray(self._reference_nll)
        return FileEstimate(
            kld_mean=self.interval(self._column(self._kld, file)),
            ppl_ratio=_exp_interval(self.interval(log_ratio)),
            same_top=self.interval(self._column(self._same_top, file)),
            perplexity=perplexity,
        )

    # -- the stopping rule -------------------------------------------------------------------------------

    def order(self) -> list[int]:
        """Ranked files by mean KLD so far, smallest first."""
        if not self._kld:
            return list(self.ranked)
        means = np.mean(np.stack(self._kld), axis=0)
        return sorted(self.ranked, key=lambda i: (means[i], i))

    def order_settled(self) -> bool:
        order = self.order()
        if len(order) < 2:
            return True
        if self.n_windows < 2:
            return False
        klds = np.stack(self._kld)
        level = 1 - (1 - self.confidence) / (len(order) - 1)
        quantile = self._quantile(level)
        for lower, upper in zip(order, order[1:]):
            difference = klds[:, upper] - klds[:, lower]
            mean, error = float(difference.mean()), self._standard_error(difference)
            if error == 0:
                continue  # identical files, or the text used up: the order is what was measured
            if mean <= quantile * error:
                return False
        return True

    def _order_done(self) -> bool:
        return not self.settle_order or self.order_settled()

    def precise_enough(self) -> bool:
        if self.has_reference:
            klds = np.stack(self._kld)
            return all(self.interval(klds[:, i]).relative_error <= self.rel_error for i in self.ranked)
        nlls = np.stack(self._nll)
        return all(self._standard_error(nlls[:, i]) <= self.rel_error for i in range(self.n_files))

    def used_up(self) -> bool:
        return self.n_windows >= self.windows_available

    def settled(self) -> bool:
        """True when measuring more cannot change the answer at the asked precision and confidence."""
        if self.used_up():
            return True
        if self.n_windows < self.min_windows:
            return False
        return self.precise_enough() and self._order_done()

    def summary(self, *, seed: int, tokens_per_window: int) -> SequentialSummary:
        settled = self.n_windows >= self.min_windows and self.precise_enough() and self._order_done()
        return SequentialSummary(
            rel_error=self.rel_error,
            confidence=self.confidence,
            seed=seed,
            windows_used=self.n_windows,
            windows_available=self.windows_available,
            tokens_per_window=tokens_per_window,
            tokens_scored=self.n_windows * tokens_per_window,
            stopped="settled" if settled and not self.used_up() else "text used up",
            order_settled=self.used_up() or self.order_settled(),
            order=self.order(),
        )


def _exp_interval(log_interval: Interval) -> Interval:
    """exp of a log-scale interval; its standard error by the delta method."""
    centre = math.exp(log_interval.mean)
    return Interval(
        centre,
        centre * log_interval.standard_error,
        math.exp(log_interval.low),
        math.exp(log_interval.high),
    )


def feed_batch(
    estimator: SequentialEstimator, means: Sequence[WindowMeans], reference_nll: np.ndarray | None
) -> bool:
    """One batch's window means of every file (and the reference's own mean nll per window) into the
    estimator; True when it is settled and the sweep stops."""
    for window in range(len(means[0])):
        by_file = np.stack([m[window] for m in means])
        estimator.add_window(
            nll=by_file[:, 0],
            kld=by_file[:, 1] if reference_nll is not None else None,
            same_top=by_file[:, 2] if reference_nll is not None else None,
            reference_nll=float(reference_nll[window]) if reference_nll is not None else None,
        )
    return estimator.settled()
