"""A Hugging Face model card (README.md) for a folder of GGUF files made by phiquant.

The card is built from what the folder holds, not from memory: each file's metadata (type, size, bits
per weight, the phiquant and llama-cpp-python versions that wrote it, the importance matrix it used)
and the report `phiquant report` / `quantize --eval` wrote (`<model>-report.json` and `.png`).  The
front matter carries the keys the Hub reads to link a quantization to its base model
(base_model, base_model_relation: quantized, license, quantized_by, tags).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phiquant import temporary_files
from phiquant.errors import PhiquantError
from phiquant.gguf_io import format_bytes, read_gguf
from phiquant.gguf_io.split import SHARD_NAME, ordered_shard_sets, reproducing_option
from phiquant.inspection import inspect_gguf
from phiquant.integrations.card_identity import base_model_of, license_of
from phiquant.version import __version__

BASE_TAGS = ("gguf", "llama.cpp", "quantized", "phiquant")
UNQUANTIZED_TYPES = ("F32", "BF16", "F16")


@dataclass
class CardFile:
    name: str
    type: str
    file_size: int
    bits_per_weight: float
    imatrix: str | None  # the importance matrix file named in quantize.imatrix.file
    shards: int = 1  # a split model's file count (`name` is its first shard)
    split_option: str = ""  # the phiquant option that makes these shards

    @property
    def output_name(self) -> str:
        """The -o name that produces this file (a split model's name without -00001-of-0000N)."""
        match = SHARD_NAME.match(self.name) if self.shards > 1 else None
        return f"{match['prefix']}.gguf" if match else self.name


@dataclass
class QualityRow:
    name: str
    type: str
    file_size: int
    perplexity: float
    perplexity_uncertainty: float
    kld_mean: float | None
    kld_p99: float | None
    same_top: float | None
    is_reference: bool
    recommended: bool


@dataclass
class ModelCard:
    directory: Path
    text: str
    base_model: str
    license: str
    quantized_by: str
    tags: list[str]
    files: list[CardFile]
    quality: list[QualityRow]
    report: Path | None  # the report JSON the quality table comes from
    plot: Path | None
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    base_model_relation: str = "quantized"  # or "finetune": the files are a fine-tune of base_model


def build_card(
    directory: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    license: str | None = None,
    quantized_by: str = "phiquant",
    tags: Sequence[str] = (),
) -> ModelCard:
    folder = Path(directory)
    if not folder.is_dir():
        raise PhiquantError("not a directory", path=folder)
    paths = ordered_shard_sets(sorted(folder.glob("*.gguf")))  # a split model by its first shard
    if not paths:
        raise PhiquantError("no .gguf files in this directory", path=folder)
    files = sorted((_card_file(p) for p in paths), key=lambda f: (f.file_size, f.name))
    first = read_gguf(paths[0])
    warnings: list[str] = []
    base, relation = (base_model, "quantized") if base_model else base_model_of(first, warnings)
    card_license = license or license_of(first, base, warnings)
    arch = str(first.get("general.architecture") or "")
    model_name = str(first.get("general.name") or paths[0].stem)
    all_tags = list(dict.fromkeys([*BASE_TAGS, *([arch] if arch else []), *tags]))
    report = _find_report(folder, {p.name for p in paths})
    quality, recommendation, plot = _quality(report) if report else ([], "", None)
    versions = _versions(paths)
    text = render_card(
        name=model_name,
        base_model=base,
        relation=relation,
        license=card_license,
        quantized_by=quantized_by,
        tags=all_tags,
        files=files,
        quality=quality,
        recommendation=recommendation,
        plot=plot,
        versions=versions,
        commands=commands(base if relation == "quantized" else f"./{model_name}", files, report is not None),
        example=_example_file(files, quality),
    )
    return ModelCard(
        folder,
        text,
        base,
        card_license,
        quantized_by,
        all_tags,
        files,
        quality,
        report,
        plot,
        None,
        warnings,
        relation,
    )


def _card_file(path: Path) -> CardFile:
    report = inspect_gguf(path)
    gguf = read_gguf(path)
    imatrix = gguf.get("quantize.imatrix.file")
    return CardFile(
        path.name,
        report.file_type or "?",
        report.file_size,
        report.bits_per_weight,
        imatrix if isinstance(imatrix, str) else None,
        max(1, len(report.shards)),
        reproducing_option(gguf) if gguf.is_split else "",
    )


def _find_report(folder: Path, names: set[str]) -> Path | None:
    """The newest report JSON in the folder that evaluated at least one of its files."""
    candidates = sorted(folder.glob("*-report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
            evaluated = {Path(f["path"]).name for f in data["evaluation"]["files"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if evaluated & names:
            return candidate
    return None


def _quality(report: Path) -> tuple[list[QualityRow], str, Path | None]:
    data = json.loads(report.read_text(encoding="utf-8"))
    recommended = Path(data["recommended"]).name if data.get("recommended") else None
    rows = []
    for f in sorted(data["evaluation"]["files"], key=lambda f: (f["file_size"], f["path"])):
        divergence = f.get("divergence") or {}
        name = Path(f["path"]).name
        rows.append(
            QualityRow(
                name,
                f["type"],
                f["file_size"],
                f["perplexity"]["value"],
                f["perplexity"]["uncertainty"],
                divergence.get("kld_mean"),
                divergence.get("kld_p99"),
                divergence.get("same_top"),
                bool(f.get("is_reference")),
                name == recommended,
            )
        )
    plot_name = (data.get("files") or {}).get("plot")
    plot = report.parent / Path(plot_name).name if plot_name else None
    return rows, str(data.get("recommendation") or ""), plot if plot and plot.is_file() else None


def _versions(paths: Sequence[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"phiquant": [], "llama-cpp-python": []}
    for path in paths:
        gguf = read_gguf(path)
        for label, key in (
            ("phiquant", "phiquant.version"),
            ("llama-cpp-python", "phiquant.llama_cpp_python_version"),
        ):
            value = gguf.get(key)
            if isinstance(value, str) and value not in found[label]:
                found[label].append(value)
    return found


def commands(base_model: str, files: Sequence[CardFile], evaluated: bool) -> list[str]:
    """The phiquant commands that make these files from the base model (one pass for the ladder)."""
    quantized = [f for f in files if f.type not in UNQUANTIZED_TYPES]
    lines = []
    for f in files:
        if f.type in UNQUANTIZED_TYPES:
            split = f" {f.split_option}" if f.split_option else ""
            lines.append(
                f"phiquant convert {base_model} --outtype {f.type.lower()} -o {f.output_name}{split}"
            )
    by_options: dict[tuple[str | None, str], list[str]] = {}
    for f in quantized:
        by_options.setdefault((f.imatrix, f.split_option), []).append(f.type)
    for (imatrix, split), types in by_options.items():
        option = (f" --imatrix {Path(imatrix).name}" if imatrix else "") + (f" {split}" if split else "")
        lines.append(f"phiquant quantize {base_model} {' '.join(f'-t {t}' for t in types)}{option} -o .")
    if evaluated:
        lines.append("phiquant report .")
    return lines


def render_card(
    *,
    name: str,
    base_model: str,
    relation: str = "quantized",
    license: str,
    quantized_by: str,
    tags: Sequence[str],
    files: Sequence[CardFile],
    quality: Sequence[QualityRow],
    recommendation: str,
    plot: Path | None,
    versions: dict[str, list[str]],
    commands: Sequence[str],
    example: str,
) -> str:
    # JSON strings are valid YAML double-quoted scalars, so values need no YAML escaping rules of their own.
    front = [
        "---",
        f"base_model: {json.dumps(base_model)}",
        f"base_model_relation: {relation}",
        f"license: {json.dumps(license)}",
        f"quantized_by: {json.dumps(quantized_by)}",
        "library_name: gguf",
        "pipeline_tag: text-generation",
        "tags:",
        *[f"- {json.dumps(tag)}" for tag in tags],
        "---",
    ]
    lines = [
        *front,
        "",
        f"# {name} GGUF",
        "",
        f"llama.cpp GGUF files of {'' if relation == 'quantized' else 'a fine-tune of '}"
        f"[{base_model}](https://huggingface.co/{base_model}), made with "
        f"[phiquant](https://pypi.org/project/phiquant/) {_joined(versions['phiquant']) or __version__} "
        f"(llama.cpp through llama-cpp-python {_joined(versions['llama-cpp-python']) or 'unknown'}).",
        "",
        "## Files",
        "",
        "| file | type | size | bits/weight |",
        "|---|---|---|---|",
        *[
            f"| {f.name}{f' (+{f.shards - 1} more shards)' if f.shards > 1 else ''} | {f.type} | "
            f"{format_bytes(f.file_size)} | {f.bits_per_weight:.2f} |"
            for f in files
        ],
        *(
            [
                "",
                "Files over the Hub's size limit are split into shards `-00001-of-0000N.gguf`: download them all; "
                "llama.cpp (and phiquant) load the model from the first shard.",
            ]
            if any(f.shards > 1 for f in files)
            else []
        ),
        "",
        "## Quality",
        "",
        *_quality_section(quality, recommendation, plot),
        "## How these files were made",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "## Use",
        "",
        "```bash",
        f"phiquant chat {example}",
        *_ollama_lines(example, name, files),
        "```",
        "",
    ]
    return "\n".join(lines)


def _ollama_lines(example: str, name: str, files: Sequence[CardFile]) -> list[str]:
    lines = [f"phiquant ollama {example} -o Modelfile && ollama create {name.lower()} -f Modelfile"]
    match = SHARD_NAME.match(example)
    if match and any(f.name == example and f.shards > 1 for f in files):
        # Ollama's FROM takes one file; the Modelfile names the merged one.
        merged = f"{match['prefix']}.gguf"
        lines.insert(
            0,
            f"phiquant merge {example} -o {merged}  # Ollama reads one file "
            f"(or llama.cpp's llama-gguf-split --merge {example} {merged})",
        )
    return lines


def _example_file(files: Sequence[CardFile], quality: Sequence[QualityRow]) -> str:
    """The recommended file, else the largest quantized one, else the first."""
    recommended = [row.name for row in quality if row.recommended]
    quantized = [f.name for f in files if f.type not in UNQUANTIZED_TYPES]
    return (recommended or quantized[-1:] or [files[0].name])[0]


def _quality_section(quality: Sequence[QualityRow], recommendation: str, plot: Path | None) -> list[str]:
    if not quality:
        return ["No evaluation in this folder: `phiquant report .` measures every file.", ""]
    lines = [
        "Perplexity on phiquant's held-out text and KL divergence from the unquantized reference "
        "(nats per token; lower is closer), as `phiquant report` measured them.",
        "",
        "| file | type | size | perplexity | mean KLD | 99% KLD | same top token | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in quality:
        marks = " ".join(
            m for m, on in (("recommended", row.recommended), ("reference", row.is_reference)) if on
        )
        lines.append(
            f"| {row.name} | {row.type} | {format_bytes(row.file_size)} | "
            f"{row.perplexity:.3f} ± {row.perplexity_uncertainty:.3f} | {_optional(row.kld_mean, '.4f')} | "
            f"{_optional(row.kld_p99, '.4f')} | "
            f"{_optional(None if row.same_top is None else 100 * row.same_top, '.2f')}{'%' if row.same_top is not None else ''} | "
            f"{marks} |"
        )
    lines.append("")
    if recommendation:
        lines += [f"**Which file:** {recommendation}.", ""]
    if plot is not None:
        lines += [f"![size against KL divergence]({plot.name})", ""]
    return lines


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _joined(values: Sequence[str]) -> str:
    return ", ".join(values)


def write_card(card: ModelCard, output: str | os.PathLike[str] | None = None) -> ModelCard:
    path = Path(output) if output is not None else card.directory / "README.md"
    try:
        temporary_files.write_text(path, card.text)
    except OSError as error:
        raise PhiquantError(f"cannot write the model card: {error.strerror}", path=path) from None
    card.path = path
    return card
