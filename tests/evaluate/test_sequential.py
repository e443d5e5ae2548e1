"""The sequential estimator on synthetic window means: its intervals, its stopping rule, its order.

Populations of window means are drawn here (skewed, like KL divergence), so the truth — the population's
mean — is known and the estimator never sees it."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.evaluate.sequential import (
    MIN_WINDOWS,
    SequentialEstimator,
    feed_batch,
    t_quantile,
    window_order,
)

# Student's t quantiles from printed tables (Fisher & Yates; any statistics textbook's appendix).
T_TABLE = [(0.975, 5, 2.571), (0.975, 7, 2.365), (0.975, 15, 2.131), (0.975, 30, 2.042), (0.995, 10, 3.169)]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_t_quantile_matches_the_printed_table(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("n_windows", [1, 5, 16, 100, 157])
def test_window_order_is_a_seeded_permutation(n_windows: int) -> None:
    order = window_order(n_windows, 7)
    assert sorted(order.tolist()) == list(range(n_windows))
    assert np.array_equal(order, window_order(n_windows, 7))
    if n_windows > 5:
        assert not np.array_equal(order, window_order(n_windows, 8))


def test_every_prefix_of_the_order_spreads_over_the_text() -> None:
    """Each round of MIN_WINDOWS windows takes one from each sixteenth of the text."""
    order = window_order(160, 3)
    for start in range(0, 160, MIN_WINDOWS):
        assert sorted(order[start : start + MIN_WINDOWS] // 10) == list(range(16))


def population(n_windows: int, n_files: int, seed: int) -> np.ndarray:
    """(windows, files, 3) window means: a ladder of KLD levels 4x apart sharing each window's
    difficulty (hard passages are hard for every file), skewed like real KLD; file 0 is the reference."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(4.0, 0.25, size=n_windows)
    levels = np.array([0.0] + [0.001 * 4**i for i in range(n_files - 1)])
    noise = rng.gamma(16.0, 1 / 16, size=(n_windows, n_files))
    kld = difficulty[:, None] * levels[None, :] * noise
    nll = 3.0 + kld + rng.normal(0, 0.3, size=(n_windows, 1))
    same_top = 1 - np.minimum(kld, 1)
    return np.stack([nll, kld, same_top], axis=2)


def run(values: np.ndarray, seed: int, rel_error: float = 0.05, per_batch: int = 4) -> SequentialEstimator:
    n_windows, n_files, _ = values.shape
    estimator = SequentialEstimator(
        n_files,
        n_windows,
        rel_error=rel_error,
        is_reference=[True] + [False] * (n_files - 1),
        has_reference=True,
    )
    order = window_order(n_windows, seed)
    for start in range(0, n_windows, per_batch):
        batch = order[start : start + per_batch]
        if feed_batch(estimator, [values[batch, i] for i in range(n_files)], values[batch, 0, 0]):
            break
    return estimator


def test_intervals_hold_the_population_mean_and_the_order_is_right() -> None:
    values = population(400, 5, seed=1)
    truth = values[:, :, 1].mean(axis=0)
    runs = 200
    covered = np.zeros(5)
    order_right = 0
    used = []
    for seed in range(runs):
        estimator = run(values, seed)
        used.append(estimator.n_windows)
        covered += [estimator.estimate(i).kld_mean.contains(truth[i]) for i in range(5)]
        order_right += estimator.order() == [1, 2, 3, 4]
    assert covered[0] == runs  # the reference: exactly 0, always
    assert all(covered[1:] >= 0.92 * runs), covered
    assert order_right >= 0.95 * runs
    assert np.median(used) < 200  # stopped well before the text was used up


def test_stops_when_every_file_reaches_the_relative_error() -> None:
    values = population(400, 4, seed=2)
    estimator = run(values, 0, rel_error=0.03)
    assert estimator.n_windows >= MIN_WINDOWS
    for i in (1, 2, 3):
        assert estimator.estimate(i).kld_mean.relative_error <= 0.03
    looser = run(values, 0, rel_error=0.10)
    assert looser.n_windows < estimator.n_windows


def test_never_stops_before_the_minimum_number_of_windows() -> None:
    values = population(400, 3, seed=3)
    values[:, :, 1] = np.array([0.0, 0.01, 0.04])  # no spread at all: any window tells everything
    assert run(values, 0).n_windows == MIN_WINDOWS


def test_files_of_equal_divergence_run_to_the_end_and_report_the_full_figures() -> None:
    values = population(60, 3, seed=4)
    rng = np.random.default_rng(5)
    values[:, 2, 1] = values[:, 1, 1] * rng.uniform(0.9, 1.1, size=60)  # the same level, noise around it
    values[:, 2, 1] *= values[:, 1, 1].sum() / values[:, 2, 1].sum()  # exactly the same full-text mean
    estimator = run(values, 0)
    assert estimator.n_windows == 60  # the order of two equal files never settles
    summary = estimator.summary(seed=0, tokens_per_window=255)
    assert summary.stopped == "text used up" and summary.tokens_scored == 60 * 255
    for i in (1, 2):
        interval = estimator.estimate(i).kld_mean
        assert interval.standard_error == 0  # every window measured: the full-text mean itself
        assert interval.mean == pytest.approx(values[:, i, 1].mean(), rel=1e-12)


def test_identical_files_do_not_hold_the_order_open() -> None:
    values = population(400, 3, seed=6)
    values[:, 2] = values[:, 1]
    assert run(values, 0).n_windows < 400


def test_perplexity_only_stops_on_the_perplexity_error() -> None:
    rng = np.random.default_rng(7)
    nll = 3.0 + rng.normal(0, 0.4, size=(300, 2))
    estimator = SequentialEstimator(2, 300, rel_error=0.02, is_reference=[False, False], has_reference=False)
    for w in window_order(300, 0):
        estimator.add_window(nll=nll[w])
        if estimator.settled():
            break
    estimate = estimator.estimate(0)
    assert estimate.kld_mean is None
    relative = estimate.perplexity.standard_error / estimate.perplexity.mean
    assert relative <= 0.02 and estimator.n_windows < 300
