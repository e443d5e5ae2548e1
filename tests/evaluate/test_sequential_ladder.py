"""Sequential evaluation of a real ladder: coverage of its intervals against the full text, equality with
a full pass when it runs to the end, and its options' bad values refused."""

from __future__ import annotations

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.evaluate.options import EvalOptions
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.evaluate.sequential_replay import coverage, full_pass

RUNS = 20


@pytest.mark.slow
def test_intervals_hold_the_full_text_kld_and_the_order_is_the_full_texts(ladder, eval_text) -> None:
    """The fixture's ladder over 58 windows of 128 tokens: one full pass, then RUNS seeded sequential runs
    replayed from its window means with the production estimator (tests/evaluate/sequential_replay.py;
    benchmarks/sequential_coverage.py does 100 runs on two models)."""
    files = [ladder[t] for t in ("F16", "Q8_0", "Q4_K_M", "Q2_K")]
    full = full_pass(files, ladder["F16"], eval_text, ctx=128)
    assert full.plan.n_windows > 40
    result = coverage(full, RUNS, rel_error=0.05)
    print(f"covered {result.covered}, order right {result.order_right}/{RUNS}, windows {result.windows_used}")
    assert result.covered[0] == RUNS  # the reference: KLD exactly 0
    assert all(c >= RUNS - 3 for c in result.covered[1:])
    assert result.order_right >= RUNS - 1
    assert min(result.windows_used) < full.plan.n_windows  # it did stop early


@pytest.mark.slow
def test_sequential_run_to_the_end_equals_the_full_pass(ladder, eval_text) -> None:
    """Every window used: the full pass's figures, to the rounding of decoding the windows in other batch
    arrangements (k-quant kernels round a row's dot products by its place in the batch: 1e-10 relative
    on Q2_K, nothing on F16 and Q8_0).  `--full` itself gives today's figures exactly."""
    files = [ladder[t] for t in ("F16", "Q8_0", "Q2_K")]
    options = dict(ctx=256, max_windows=6, speed_runs=0)
    full = api.evaluate(files, text=eval_text, options=EvalOptions(**options, full=True))
    sequential = api.evaluate(files, text=eval_text, options=EvalOptions(**options, rel_error=1e-9, seed=3))
    assert full.sequential is None and sequential.sequential is not None
    assert sequential.sequential.stopped == "text used up" and sequential.sequential.windows_used == 6
    assert sequential.n_scored_tokens == full.n_scored_tokens == 6 * 127
    for ours, theirs in zip(sequential.files, full.files):
        assert ours.perplexity.n_tokens == theirs.perplexity.n_tokens
        assert ours.perplexity.value == pytest.approx(theirs.perplexity.value, rel=1e-8)
        for name in ("kld_mean", "kld_median", "kld_max", "same_top", "ppl_ratio"):
            expected = getattr(theirs.divergence, name)
            assert getattr(ours.divergence, name) == pytest.approx(expected, rel=1e-7, abs=1e-12), name
        interval = ours.estimate.kld_mean
        assert interval.standard_error == 0 and interval.low == interval.high == interval.mean
        assert interval.mean == pytest.approx(theirs.divergence.kld_mean, rel=1e-7, abs=1e-12)
    assert sequential.reference_from_cache  # the full pass cached every window's reference states


@pytest.mark.parametrize("value", ["0", "-0.05", "nan"])
def test_a_relative_error_that_is_not_positive_is_refused(value) -> None:
    result = run_phiquant("eval", "model.gguf", "--rel-error", value)
    assert_one_line_error(result, "--rel-error")


def test_the_api_refuses_a_relative_error_that_is_not_positive(tmp_path) -> None:
    with pytest.raises(PhiquantError, match="--rel-error must be above 0, not 0"):
        api.evaluate(tmp_path / "model.gguf", text=tmp_path / "t.txt", options=EvalOptions(rel_error=0))


def test_quantize_eval_refuses_a_bad_relative_error_before_writing_anything(tmp_path) -> None:
    out = tmp_path / "q"
    result = run_phiquant(
        "quantize", tmp_path / "no-checkpoint", "-t", "Q8_0", "-o", out, "--eval", "--eval-rel-error", "0"
    )
    assert_one_line_error(result, "--eval-rel-error must be above 0")
    assert not out.exists()
