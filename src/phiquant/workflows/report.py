"""`report`: evaluate every file of a model and write the report (Markdown, JSON, plot) beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from phiquant.errors import PhiquantError
from phiquant.evaluate.evaluation import evaluate
from phiquant.evaluate.options import DEFAULT_MAX_KLD, DEFAULT_OPTIONS, EvalOptions
from phiquant.evaluate.report import Report, build_report, write_report
from phiquant.gguf_io import read_gguf
from phiquant.progress import SILENT, Reporter


def gguf_files_in(inputs: Sequence[str | Path]) -> list[Path]:
    """The GGUF files named, with directories standing for every *.gguf file inside them."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.gguf"))
            if not found:
                raise PhiquantError("no .gguf files in this directory", path=item)
            paths += found
        else:
            paths.append(item)
    return paths


def report_files(
    inputs: str | Path | Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    text: str | Path | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    max_kld: float = DEFAULT_MAX_KLD,
    output_dir: str | Path | None = None,
    plot: bool = True,
    model_name: str = "",
    reporter: Reporter = SILENT,
) -> Report:
    """Evaluate every file of a model (files, or directories of them) and write `<model>-report.md`,
    `.json` and `.png` (size against mean KL divergence, Pareto front marked) into `output_dir`
    (default: the first file's directory), recommending the smallest file under `max_kld`."""
    if max_kld <= 0:
        raise PhiquantError(f"--max-kld must be positive, not {max_kld}")
    paths = gguf_files_in([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    evaluation = evaluate(paths, reference=reference, text=text, options=options, reporter=reporter)
    name = model_name or gguf_model_name(paths)
    built = build_report(evaluation, max_kld=max_kld, model=name)
    directory = Path(output_dir) if output_dir is not None else paths[0].parent
    return write_report(built, directory, plot=plot)


def gguf_model_name(paths: Sequence[Path]) -> str:
    name = read_gguf(paths[0]).get("general.name")
    return str(name).replace(" ", "-") if isinstance(name, str) and name else paths[0].stem
