"""Sequential evaluation replayed from one full pass: the coverage of its intervals measured cheaply.

A full pass (phiquant's own, every window in text order) gives every file's per-window means and its
full-text figures.  A sequential run is then replayed on those window means for any seed with the
production pieces: `window_order`, `WindowPlan.batches_of`, `feed_batch` and `SequentialEstimator`, so
hundreds of seeded runs cost no decoding.  Used by the slow coverage test and
benchmarks/sequential_coverage.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiquant.evaluate.evaluation import _resolve, read_text, tokenize_text
from phiquant.evaluate.reference import ReferenceSource
from phiquant.evaluate.runner import evaluate_pass
from phiquant.evaluate.scoring import TokenScores
from phiquant.evaluate.sequential import SequentialEstimator, feed_batch, window_order
from phiquant.evaluate.statistics import divergence
from phiquant.evaluate.windows import WindowPlan, plan_windows
from phiquant.progress import SILENT


@dataclass
class FullPass:
    """Per-window means of every file of a ladder (text order), and its full-text figures."""

    plan: WindowPlan
    types: list[str]
    is_reference: list[bool]
    means: list[np.ndarray]  # per file: (n_windows, 3) mean nll, KLD, same-top
    reference_nll: np.ndarray  # (n_windows,)
    kld_mean: list[float]  # full-text mean KLD per file, as --full reports it

    @property
    def order(self) -> list[int]:
        """Non-reference files by full-text mean KLD, smallest first."""
        ranked = [i for i, ref in enumerate(self.is_reference) if not ref]
        return sorted(ranked, key=lambda i: (self.kld_mean[i], i))


def _window_means(scores: TokenScores, name: str, per_window: int) -> np.ndarray:
    return scores.joined(name).reshape(-1, per_window).mean(axis=1)


def full_pass(paths: list[Path], reference: Path, text: Path, ctx: int = 512) -> FullPass:
    files, chosen = _resolve(paths, reference)
    assert chosen is not None
    tokens, adds_bos, bos_id = tokenize_text(chosen, read_text(text))
    plan = plan_windows(tokens, ctx, adds_bos=adds_bos, bos_id=bos_id)
    with ReferenceSource(chosen, plan, None, SILENT) as source:
        result = evaluate_pass(files, plan, chosen, source, n_threads=None, reporter=SILENT)
    assert result.reference_scores is not None
    per_window = plan.scored_per_window
    means = [
        np.stack([_window_means(s, name, per_window) for name in ("nll", "kld", "same_top")], axis=1)
        for s in result.scores
    ]
    return FullPass(
        plan=plan,
        types=[f.file_type for f in files],
        is_reference=[f.path.resolve() == chosen.path.resolve() for f in files],
        means=means,
        reference_nll=_window_means(result.reference_scores, "nll", per_window),
        kld_mean=[divergence(s, result.reference_scores).kld_mean for s in result.scores],
    )


def replay(full: FullPass, seed: int, rel_error: float) -> SequentialEstimator:
    """The sequential run `phiquant eval --seed SEED --rel-error R` makes on these files and text."""
    estimator = SequentialEstimator(
        len(full.means),
        full.plan.n_windows,
        rel_error=rel_error,
        is_reference=full.is_reference,
        has_reference=True,
    )
    for indices in full.plan.batches_of(window_order(full.plan.n_windows, seed)):
        if feed_batch(estimator, [m[indices] for m in full.means], full.reference_nll[indices]):
            break
    return estimator


@dataclass
class Coverage:
    runs: int
    covered: list[int]  # per file: runs whose 95% interval holds the full-text mean KLD
    order_right: int  # runs whose order equals the full-text order
    windows_used: list[int]  # per run


def coverage(full: FullPass, runs: int, rel_error: float, first_seed: int = 0) -> Coverage:
    covered = [0] * len(full.means)
    order_right, used = 0, []
    for seed in range(first_seed, first_seed + runs):
        estimator = replay(full, seed, rel_error)
        used.append(estimator.n_windows)
        for i in range(len(full.means)):
            interval = estimator.estimate(i).kld_mean
            assert interval is not None
            covered[i] += interval.contains(full.kld_mean[i])
        order_right += estimator.order() == full.order
    return Coverage(runs, covered, order_right, used)
