"""The report of a model's files: a Markdown table, a JSON document, a size-vs-divergence plot, and which
file to pick.

The recommendation is the smallest file whose mean KL divergence from the reference is at most
`max_kld`.  The default, 0.05 nats, comes from llama.cpp's own published measurements
(tools/perplexity/README.md, Llama-3-8B on Wikitext-2 against FP16): Q8_0 0.0014, Q6_K 0.0055,
Q5_K_M 0.011, Q4_K_M 0.031, Q4_0 0.072, Q3_K_M 0.10, Q2_K 0.33.  0.05 admits what the community calls
"fine" (Q4_K_M and above on 7-8B models) and rejects what it calls noticeably worse (Q4_0 and below).
Small models lose more to the same type (their weights carry more information each), so on them the
same threshold picks a larger type: that is the point of measuring instead of following folklore.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from phiquant import temporary_files
from phiquant.errors import make_output_directory
from phiquant.evaluate.evaluation import Evaluation, FileEvaluation
from phiquant.evaluate.options import DEFAULT_MAX_KLD
from phiquant.evaluate.sequential import Interval
from phiquant.gguf_io import format_bytes


@dataclass
class ReportRow:
    file: FileEvaluation
    on_pareto_front: bool
    recommended: bool


@dataclass
class Report:
    model: str
    evaluation: Evaluation
    rows: list[ReportRow]  # smallest file first
    max_kld: float
    recommended: Path | None
    recommendation: str  # one sentence saying what to pick and why
    markdown_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None


def pareto_front(files: list[FileEvaluation]) -> set[Path]:
    """Files no other file beats on both size and mean KLD (smaller-or-equal in both, better in one)."""
    scored = [f for f in files if f.divergence is not None]
    front = set()
    for f in scored:
        assert f.divergence is not None
        dominated = any(
            g is not f
            and g.divergence is not None
            and g.file_size <= f.file_size
            and g.divergence.kld_mean <= f.divergence.kld_mean
            and (g.file_size < f.file_size or g.divergence.kld_mean < f.divergence.kld_mean)
            for g in scored
        )
        if not dominated:
            front.add(f.path)
    return front


def recommend(files: list[FileEvaluation], max_kld: float) -> tuple[FileEvaluation | None, str]:
    scored = [f for f in files if f.divergence is not None]
    if not scored:
        return None, "no reference file, so no KL divergence: give --ref to get a recommendation"
    passing = [f for f in scored if f.divergence and f.divergence.kld_mean <= max_kld]
    if not passing:
        return None, f"no file keeps the mean KL divergence under {max_kld:g}; use the reference itself"
    best = min(passing, key=lambda f: (f.file_size, f.path.name))
    assert best.divergence is not None
    return best, (
        f"{best.path.name} ({best.type}, {format_bytes(best.file_size)}): the smallest file whose mean KL "
        f"divergence ({best.divergence.kld_mean:.4f}) stays under {max_kld:g} nats"
    )


def build_report(evaluation: Evaluation, *, max_kld: float = DEFAULT_MAX_KLD, model: str = "") -> Report:
    files = sorted(evaluation.files, key=lambda f: (f.file_size, f.path.name))
    front = pareto_front(files)
    best, sentence = recommend(files, max_kld)
    rows = [ReportRow(f, f.path in front, best is not None and f.path == best.path) for f in files]
    name = model or (files[-1].path.stem if files else "model")
    return Report(name, evaluation, rows, max_kld, best.path if best else None, sentence)


# -- Markdown -------------------------------------------------------------------------------------------

COLUMNS = (
    "file",
    "type",
    "size",
    "bits/weight",
    "PPL",
    "PPL ratio",
    "mean KLD",
    "median KLD",
    "99% KLD",
    "max KLD",
    "same top",
    "Δp top mean",
    "Δp top RMS",
    "pp t/s",
    "tg t/s",
    "",
)


def _number(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.2e}"


def _plus_minus(value: float, interval: Interval | None, scale: float = 1.0, digits: int = 4) -> str:
    """`value`, with the half-width of its confidence interval when sequential evaluation gave one."""
    if interval is None or interval.standard_error == 0:
        return _number(scale * value, digits)
    half = scale * (interval.high - interval.low) / 2
    return f"{_number(scale * value, digits)} ± {_number(half, digits)}"


def table_row(row: ReportRow) -> list[str]:
    f, d, s = row.file, row.file.divergence, row.file.speed
    e = f.estimate
    marks = " ".join(
        m
        for m, on in (
            ("recommended", row.recommended),
            ("Pareto", row.on_pareto_front),
            ("reference", f.is_reference),
        )
        if on
    )
    divergence_cells = (
        [
            _plus_minus(d.ppl_ratio, e.ppl_ratio if e else None),
            _plus_minus(d.kld_mean, e.kld_mean if e else None),
            _number(d.kld_median),
            _number(d.kld_p99),
            _number(d.kld_max),
            _plus_minus(d.same_top, e.same_top if e else None, 100, 2) + "%",
            f"{100 * d.dp_top_mean:+.3f}%",
            f"{100 * d.dp_top_rms:.3f}%",
        ]
        if d
        else ["-"] * 8
    )
    speed_cells = [f"{s.pp_tokens_per_second:.0f}", f"{s.tg_tokens_per_second:.1f}"] if s else ["-", "-"]
    # Sequentially: the window-based interval's half-width; with --full: llama-perplexity's "+/-".
    half = (e.perplexity.high - e.perplexity.low) / 2 if e else f.perplexity.uncertainty
    ppl = f"{f.perplexity.value:.3f} ± {half:.3f}"
    return [
        f.path.name,
        f.type,
        format_bytes(f.file_size),
        f"{f.bits_per_weight:.2f}",
        ppl,
        *divergence_cells,
        *speed_cells,
        marks,
    ]


def to_markdown(report: Report) -> str:
    e = report.evaluation
    lines = [
        f"# {report.model}: what each file loses",
        "",
        f"Text: `{e.text.path.name}` ({e.text.n_tokens} tokens), {e.n_windows} windows of {e.ctx} tokens, "
        f"{e.n_scored_tokens} scored tokens per file (the second half of each window, as llama.cpp's "
        "perplexity tool). "
        + (f"Reference: `{e.reference.name}`." if e.reference else "No reference: perplexity only."),
        f"A model that learned nothing would score a perplexity of {e.uniform_perplexity:.0f} "
        f"(uniform over {e.n_vocab} tokens).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(table_row(row)) + " |" for row in report.rows]
    lines += [
        "",
        f"**Recommendation:** {report.recommendation}.",
        "",
        "KLD: KL divergence of each file's next-token distribution from the reference's, in nats per token "
        "(mean, median, 99th percentile, maximum). Same top: how often the most likely next token is the "
        "reference's. Δp top: change in the probability of the reference's most likely token. PPL ratio: "
        "perplexity over the reference's on the same tokens. pp/tg: prompt processing and generation speed "
        "(tokens per second, median of runs). Pareto: no other file is both smaller and closer to the "
        "reference.",
    ]
    if e.sequential is not None:
        lines += ["", sequential_sentence(report)]
    if report.plot_path is not None:
        lines += ["", f"![size against KL divergence]({report.plot_path.name})"]
    if e.notes:
        lines += ["", *[f"Note: {note}" for note in e.notes]]
    return "\n".join(lines) + "\n"


def sequential_sentence(report: Report) -> str:
    """What sequential evaluation aimed for, what it used and the uncertainty it reached."""
    e = report.evaluation
    q = e.sequential
    assert q is not None
    achieved = ", ".join(
        f"{row.file.type} {100 * row.file.estimate.kld_mean.relative_error:.1f}%"
        for row in report.rows
        if row.file.estimate and row.file.estimate.kld_mean and not row.file.is_reference
    )
    reason = (
        "each file's mean KLD reached the target and the order was settled"
        if q.stopped == "settled"
        else "the text was used up"
    )
    return (
        f"Sequential evaluation: {q.windows_used} of {q.windows_available} windows "
        f"({q.tokens_scored} of {q.windows_available * q.tokens_per_window} scored tokens per file), drawn in "
        f"a random order (seed {q.seed}) until each file's mean KLD had a relative standard error of at "
        f"most {100 * q.rel_error:g}% and the order by mean KLD was settled at {100 * q.confidence:g}% "
        f"confidence; it stopped because {reason}. ± is the {100 * q.confidence:g}% confidence interval "
        "(from the spread of window means, which accounts for tokens of one window being alike). "
        + (f"Achieved relative standard error of the mean KLD: {achieved}. " if achieved else "")
        + "`--full` measures every window."
    )


def plain(value: Any) -> Any:
    """Dataclasses, paths and tuples as JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(report: Report) -> dict[str, Any]:
    return {
        "model": report.model,
        "max_kld": report.max_kld,
        "recommended": str(report.recommended) if report.recommended else None,
        "recommendation": report.recommendation,
        "pareto_front": [str(r.file.path) for r in report.rows if r.on_pareto_front],
        "evaluation": plain(report.evaluation),
        "files": {
            "markdown": str(report.markdown_path) if report.markdown_path else None,
            "json": str(report.json_path) if report.json_path else None,
            "plot": str(report.plot_path) if report.plot_path else None,
        },
    }


def write_report(report: Report, directory: Path, *, plot: bool = True) -> Report:
    from phiquant.evaluate.plot import plot_size_vs_kld

    make_output_directory(directory)
    stem = f"{report.model}-report"
    if plot and any(r.file.divergence for r in report.rows):
        report.plot_path = plot_size_vs_kld(report, directory / f"{stem}.png")
    report.markdown_path = directory / f"{stem}.md"
    report.json_path = directory / f"{stem}.json"
    temporary_files.write_text(report.markdown_path, to_markdown(report))
    temporary_files.write_text(report.json_path, json.dumps(to_json(report), indent=2) + "\n")
    return report
