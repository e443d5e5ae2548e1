"""The report's picture: file size against mean KL divergence, one labelled point per file, the Pareto
front joined, the threshold drawn and the recommended file ringed.  matplotlib (the `eval` extra) with
the Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from phiquant import temporary_files
from phiquant.errors import PhiquantError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from phiquant.evaluate.report import Report

MB = 1_000_000  # decimal, as the table's sizes


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise PhiquantError(
            "the report's plot needs matplotlib: pip install 'phiquant[eval]' (or pass --no-plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_size_vs_kld(report: Report, path: Path) -> Path:
    """Draw the report's picture and save it as a PNG at `path`."""
    plt = _pyplot()
    figure = draw_size_vs_kld(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_files.write_with(path, lambda file: figure.savefig(file, format="png"))
    plt.close(figure)
    return path


def draw_size_vs_kld(report: Report) -> Figure:
    plt = _pyplot()
    rows = [r for r in report.rows if r.file.divergence is not None]
    # The reference is the reference: drawn at 0 even where its own decode in other batches differs from
    # its cached states by rounding (1e-13 nats).
    klds = [0.0 if r.file.is_reference else r.file.divergence.kld_mean for r in rows]  # type: ignore[union-attr]
    positive = [k for k in klds if k > 0]
    # A log axis cannot show 0: files identical to the reference sit on a floor below every other point.
    floor = min(positive + [report.max_kld]) / 10
    xs = [r.file.file_size / MB for r in rows]
    ys = [max(k, floor) for k in klds]

    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    front = sorted((x, y) for x, y, r in zip(xs, ys, rows) if r.on_pareto_front)
    if front:
        axes.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="tab:blue",
            alpha=0.5,
            label="Pareto front (nothing smaller is closer)",
        )
    for x, y, row, kld in zip(xs, ys, rows, klds):
        colour = "tab:blue" if row.on_pareto_front else "tab:gray"
        interval = row.file.estimate.kld_mean if row.file.estimate else None
        if interval is not None and interval.standard_error > 0 and not row.file.is_reference:
            low = max(interval.low, floor)
            # Drawn over the point: at a few percent they are shorter than the marker is wide.
            axes.errorbar(
                [x],
                [y],
                yerr=[[y - low], [interval.high - y]],
                color="black",
                capsize=5,
                linewidth=1,
                zorder=5,
            )
        marker = "s" if row.file.is_reference else "o"
        axes.scatter([x], [y], s=60, color=colour, marker=marker, zorder=3)
        label = row.file.type + (" (reference, KLD 0)" if kld <= 0 else "")
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        if row.recommended:
            axes.scatter(
                [x],
                [y],
                s=260,
                facecolors="none",
                edgecolors="tab:green",
                linewidths=2,
                zorder=4,
                label=f"recommended: {row.file.type}",
            )
    axes.axhline(
        report.max_kld, color="tab:red", linestyle="--", linewidth=1, label=f"--max-kld {report.max_kld:g}"
    )
    axes.set_yscale("log")
    axes.set_xlabel("file size (MB)")
    reference = report.evaluation.reference.name if report.evaluation.reference else "reference"
    axes.set_ylabel("mean KL divergence from the reference (nats/token, log)")
    sequential = report.evaluation.sequential
    bars = f", bars: {100 * sequential.confidence:g}% intervals" if sequential is not None else ""
    axes.set_title(
        f"{report.model}: size against quality loss\n"
        f"reference {reference}, {report.evaluation.n_scored_tokens} scored tokens{bars}",
        fontsize=10,
    )
    # Labels sit up and right of their points: leave room for the largest file's label.
    axes.set_xlim(right=max(xs) * 1.25 if xs else None)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return figure
