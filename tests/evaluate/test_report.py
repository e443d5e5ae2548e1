"""The report: Pareto front, recommendation, Markdown and JSON, and a plot a person can read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from phiquant.evaluate.evaluation import Evaluation, FileEvaluation, TextFacts
from phiquant.evaluate.options import DEFAULT_MAX_KLD
from phiquant.evaluate.report import build_report, pareto_front, recommend, to_json, to_markdown, write_report
from phiquant.evaluate.sequential import FileEstimate, Interval, SequentialSummary
from phiquant.evaluate.statistics import Divergence, Perplexity

# (type, size in MB, mean KLD): a ladder where Q3_K_S is dominated (bigger and worse than Q3_K_M)
LADDER = [
    ("F16", 7600, 0.0),
    ("Q8_0", 4060, 0.0012),
    ("Q6_K", 3140, 0.005),
    ("Q5_K_M", 2820, 0.011),
    ("Q4_K_M", 2390, 0.031),
    ("Q3_K_S", 2200, 0.25),
    ("Q3_K_M", 1960, 0.10),
    ("Q2_K", 1420, 0.33),
]


def divergence(kld: float) -> Divergence:
    return Divergence(
        kld, kld / 100, kld * 0.6, kld * 8, kld * 40, 1 - kld, -kld / 10, kld, 0.0, kld, math.exp(kld), kld
    )


def evaluation(ladder=LADDER, with_reference: bool = True) -> Evaluation:
    files = [
        FileEvaluation(
            Path(f"/m/model-{t}.gguf"),
            t,
            int(mb * 1e6),
            3_800_000_000,
            mb * 8e6 / 3.8e9,
            Perplexity(6.2 * math.exp(k), 0.04, 1.8 + k, 1000),
            divergence(k) if with_reference else None,
            None,
            is_reference=(t == "F16"),
        )
        for t, mb, k in ladder
    ]
    return Evaluation(
        TextFacts(Path("/t/heldout.txt"), "0" * 64, 1000, 300),
        512,
        2,
        510,
        32064,
        32064.0,
        Path("/m/model-F16.gguf") if with_reference else None,
        None,
        False,
        None,
        files,
        1.0,
        1000.0,
    )


def test_pareto_front_drops_files_bigger_and_worse_than_another() -> None:
    front = {p.name for p in pareto_front(evaluation().files)}
    assert front == {f"model-{t}.gguf" for t, _, _ in LADDER if t != "Q3_K_S"}


def test_recommendation_is_the_smallest_file_under_the_threshold() -> None:
    files = evaluation().files
    assert recommend(files, DEFAULT_MAX_KLD)[0].type == "Q4_K_M"
    assert recommend(files, 0.01)[0].type == "Q6_K"
    assert recommend(files, 1.0)[0].type == "Q2_K"
    # The reference always passes, so a threshold nothing quantized meets picks the reference.
    assert recommend(files, 1e-9)[0].type == "F16"


def test_no_recommendation_without_a_reference() -> None:
    best, sentence = recommend(evaluation(with_reference=False).files, DEFAULT_MAX_KLD)
    assert best is None and "--ref" in sentence


def test_markdown_has_one_row_per_file_smallest_first_and_marks() -> None:
    text = to_markdown(build_report(evaluation(), model="Phi-3-mini"))
    rows = [line for line in text.splitlines() if line.startswith("| model-")]
    assert [r.split(" | ")[1] for r in rows] == [t for t, _, _ in sorted(LADDER, key=lambda x: x[1])]
    assert "recommended" in next(r for r in rows if "| Q4_K_M |" in r)
    assert "Pareto" not in next(r for r in rows if "| Q3_K_S |" in r)
    assert "**Recommendation:** model-Q4_K_M.gguf" in text
    assert "32064" in text  # the uniform-vocabulary perplexity, for scale


def test_written_report_json_and_plot(tmp_path) -> None:
    report = write_report(build_report(evaluation(), model="Phi-3-mini"), tmp_path)
    document = json.loads(report.json_path.read_text())
    assert document["recommended"] == "/m/model-Q4_K_M.gguf"
    assert len(document["evaluation"]["files"]) == len(LADDER)
    assert document["max_kld"] == DEFAULT_MAX_KLD
    assert "![size against KL divergence](Phi-3-mini-report.png)" in report.markdown_path.read_text()


def test_plot_is_a_readable_png_with_axes_labels_and_one_point_per_file(tmp_path) -> None:
    image = pytest.importorskip("matplotlib.image")
    from phiquant.evaluate.plot import draw_size_vs_kld

    report = build_report(evaluation(), model="Phi-3-mini")
    figure = draw_size_vs_kld(report)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "file size (MB)"
    assert "KL divergence" in axes.get_ylabel()
    assert axes.get_title().startswith("Phi-3-mini") and "model-F16.gguf" in axes.get_title()
    labels = sorted(t.get_text().split(" ")[0] for t in axes.texts)
    assert labels == sorted(t for t, _, _ in LADDER)  # one labelled point per file
    points = [c for c in axes.collections if len(c.get_offsets()) == 1 and c.get_facecolor().size]
    assert len(points) == len(LADDER)

    written = write_report(report, tmp_path).plot_path
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(written)
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 800  # 8 x 5.5 inches at 120 dpi
    assert pixels[..., :3].std() > 0.05  # drawn, not blank


def test_identical_sizes_keep_both_on_the_front_only_when_neither_is_worse() -> None:
    ladder = [("F16", 100, 0.0), ("A", 50, 0.1), ("B", 50, 0.2)]
    front = {p.name for p in pareto_front(evaluation(ladder).files)}
    assert front == {"model-F16.gguf", "model-A.gguf"}


def sequential_evaluation() -> Evaluation:
    """The LADDER as a sequential evaluation left it: 24 of 155 windows, each mean KLD with an interval."""
    result = evaluation()
    for f in result.files:
        kld = f.divergence.kld_mean
        error = 0.04 * kld
        f.estimate = FileEstimate(
            Interval(kld, error, kld - 2.07 * error, kld + 2.07 * error),
            Interval(math.exp(kld), error, math.exp(kld - 2.07 * error), math.exp(kld + 2.07 * error)),
            Interval(1 - kld, 0.001, 1 - kld - 0.002, 1 - kld + 0.002),
            Interval(6.2, 0.05, 6.1, 6.3),
        )
    result.sequential = SequentialSummary(0.05, 0.95, 0, 24, 155, 255, 24 * 255, "settled", True, [1, 2])
    return result


def test_sequential_report_states_its_uncertainty_and_token_counts() -> None:
    text = to_markdown(build_report(sequential_evaluation(), model="Phi-3-mini"))
    assert "24 of 155 windows (6120 of 39525 scored tokens per file)" in text
    assert "relative standard error of at most 5%" in text
    assert "Q2_K 4.0%" in text  # the achieved relative error, per file
    row = next(line for line in text.splitlines() if "| Q2_K |" in line)
    assert "0.3300 ± 0.0273" in row  # mean KLD ± half the 95% interval
    document = to_json(build_report(sequential_evaluation(), model="Phi-3-mini"))
    assert document["evaluation"]["sequential"]["windows_used"] == 24
    q2 = next(f for f in document["evaluation"]["files"] if f["type"] == "Q2_K")
    assert q2["estimate"]["kld_mean"]["low"] == pytest.approx(0.33 - 2.07 * 0.04 * 0.33)


def test_sequential_plot_draws_an_error_bar_per_quantized_file() -> None:
    pytest.importorskip("matplotlib")
    from phiquant.evaluate.plot import draw_size_vs_kld

    axes = draw_size_vs_kld(build_report(sequential_evaluation(), model="Phi-3-mini")).axes[0]
    bars = [c for c in axes.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == len(LADDER) - 1  # not the reference: KLD 0 exactly
    assert "95% intervals" in axes.get_title()
