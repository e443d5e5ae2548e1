"""The budget's calibration probes: every probe file in one pass over the source, each byte-identical to
the file its own `quantize` run makes, and evaluated in memory that does not grow with their number."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.bundled import bundled_model_dir, calibration_text_path
from phiquant.evaluate import runner
from phiquant.evaluate.evaluation import evaluate
from phiquant.evaluate.options import EvalOptions
from phiquant.quant.plan import QuantOptions
from phiquant.workflows.job import open_source, plan_files, write_files

# Three differently configured files of one ladder, as calibration probes are.
OVERRIDES: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (("attn_qkv", "Q3_K"),),
    (("ffn_down", "Q3_K"), ("output", "Q6_K")),
)


@pytest.fixture(scope="module")
def one_pass_ladder(tmp_path_factory) -> list[Path]:
    directory = tmp_path_factory.mktemp("ladder")
    source = open_source(bundled_model_dir())
    paths = [directory / f"probe-{index}.gguf" for index in range(len(OVERRIDES))]
    options = [QuantOptions(tensor_types=overrides) for overrides in OVERRIDES]
    write_files(source, plan_files(source, ["Q8_0"] * len(OVERRIDES), paths, options))
    return paths


def test_files_with_their_own_options_in_one_pass_equal_their_own_quantize_runs(
    one_pass_ladder: list[Path], tmp_path: Path
) -> None:
    for index, (overrides, path) in enumerate(zip(OVERRIDES, one_pass_ladder)):
        alone = api.quantize(bundled_model_dir(), "Q8_0", tmp_path / str(index), tensor_types=overrides)
        assert path.read_bytes() == alone.files[0].path.read_bytes(), overrides


def test_options_must_match_the_files_one_for_one(tmp_path: Path) -> None:
    source = open_source(bundled_model_dir())
    with pytest.raises(ValueError, match="2 option sets for 3 files"):
        plan_files(source, ["Q8_0"] * 3, [tmp_path / f"{i}.gguf" for i in range(3)], [QuantOptions()] * 2)


@pytest.mark.slow
def test_probes_evaluated_one_at_a_time_score_as_all_together(
    one_pass_ladder: list[Path], tmp_path: Path
) -> None:
    reference = api.convert(bundled_model_dir(), tmp_path / "reference.gguf", "auto").path

    def klds(memory_budget: int | None) -> list[float]:
        options = EvalOptions(ctx=128, max_windows=4, speed_runs=0, memory_budget=memory_budget)
        evaluation = evaluate(
            one_pass_ladder, reference=reference, text=calibration_text_path(), options=options
        )
        return [f.divergence.kld_mean for f in evaluation.files if f.divergence]

    together, alone = klds(None), klds(0)
    assert len(together) == len(OVERRIDES) and together == alone


@pytest.mark.slow
def test_a_sequential_sweep_over_the_memory_budget_loads_its_files_in_turn_and_scores_the_same(
    one_pass_ladder: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = api.convert(bundled_model_dir(), tmp_path / "reference.gguf", "auto").path
    batches_in_turn: list[int] = []
    decode_in_turn = runner._decode_in_turn

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        batches_in_turn.append(1)
        return decode_in_turn(*args, **kwargs)

    monkeypatch.setattr(runner, "_decode_in_turn", counted)

    def klds(memory_budget: int | None) -> tuple[list[float], int]:
        options = EvalOptions(
            ctx=128,
            max_windows=12,
            speed_runs=0,
            memory_budget=memory_budget,
            min_windows=8,
            settle_order=False,
        )
        before = len(batches_in_turn)
        evaluation = evaluate(
            one_pass_ladder, reference=reference, text=calibration_text_path(), options=options
        )
        assert evaluation.sequential is not None and evaluation.n_windows >= 8
        return [f.divergence.kld_mean for f in evaluation.files if f.divergence], len(
            batches_in_turn
        ) - before

    together, zero, below_the_files = (
        klds(None),
        klds(0),
        klds(min(p.stat().st_size for p in one_pass_ladder)),
    )
    assert len(together[0]) == len(OVERRIDES) and together[1] == 0  # they fit this machine's memory
    assert zero[1] > 0 and below_the_files[1] > 0  # every batch decoded with the files loaded in turn
    assert together[0] == zero[0] == below_the_files[0]
