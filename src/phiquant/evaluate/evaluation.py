"""`evaluate_files`: perplexity, divergence from the reference, speed and size of every file of a model."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phiquant.bundled import heldout_text_path
from phiquant.errors import PhiquantError
from phiquant.evaluate.files import ModelFile, describe, find_reference, require_same_model
from phiquant.evaluate.options import DEFAULT_OPTIONS, EvalOptions
from phiquant.evaluate.reference import ReferenceSource
from phiquant.evaluate.runner import PassResult, evaluate_pass
from phiquant.evaluate.scoring import TokenScores
from phiquant.evaluate.sequential import (
    MIN_WINDOWS,
    FileEstimate,
    SequentialEstimator,
    SequentialSummary,
    window_order,
)
from phiquant.evaluate.speed import Speed, measure_speed
from phiquant.evaluate.statistics import Divergence, Perplexity, divergence, perplexity, uniform_perplexity
from phiquant.evaluate.windows import WindowPlan, plan_windows
from phiquant.gguf_io.split import ordered_shard_sets
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.llama import LoadedModel, LoadOptions


@dataclass
class FileEvaluation:
    path: Path
    type: str  # file type (Q4_K_M, F16, ...)
    file_size: int
    n_parameters: int
    bits_per_weight: float
    perplexity: Perplexity
    divergence: Divergence | None  # None without a reference
    speed: Speed | None
    is_reference: bool = False
    estimate: FileEstimate | None = None  # sequential evaluation's intervals (None with --full)


@dataclass
class TextFacts:
    path: Path
    sha256: str
    n_characters: int
    n_tokens: int


@dataclass
class Evaluation:
    text: TextFacts
    ctx: int
    n_windows: int
    n_scored_tokens: int  # per file
    n_vocab: int
    uniform_perplexity: float  # a model that learned nothing, for scale
    reference: Path | None
    reference_perplexity: Perplexity | None
    reference_from_cache: bool
    reference_cache: Path | None
    files: list[FileEvaluation]
    seconds: float
    evaluation_tokens_per_second: float  # tokens run through llama.cpp per second of the scoring pass
    notes: list[str] = field(default_factory=list)
    sequential: SequentialSummary | None = None  # how far sequential evaluation went (None with --full)


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PhiquantError("no such text file", path=path) from None
    except IsADirectoryError:
        raise PhiquantError("is a directory, not a text file", path=path) from None
    except OSError as error:
        raise PhiquantError(f"cannot read: {error.strerror}", path=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PhiquantError(f"not UTF-8 text (byte {error.start})", path=path) from None


def tokenize_text(file: ModelFile, text: str) -> tuple[np.ndarray, bool, int]:
    """The text as llama.cpp's perplexity tool tokenizes it (BOS if the vocabulary adds it, special
    tokens read as plain text); returns (tokens, adds_bos, bos_id)."""
    with LoadedModel(file.path, LoadOptions(vocab_only=True)) as model:
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        return np.asarray(tokens, dtype=np.int32), model.adds_bos, model.bos_id


def _resolve(
    paths: Sequence[str | Path], reference: str | Path | None
) -> tuple[list[ModelFile], ModelFile | None]:
    if not paths:
        raise PhiquantError("give at least one GGUF file to evaluate")
    # The shards of a split model, listed in order, are one model (given by its first shard).
    files = [describe(p) for p in ordered_shard_sets([Path(p) for p in paths])]
    seen: set[Path] = set()
    for file in files:
        if file.path.resolve() in seen:
            raise PhiquantError("given twice", path=file.path)
        seen.add(file.path.resolve())
    chosen = describe(reference) if reference is not None else find_reference(files)
    require_same_model(chosen or files[0], files)
    return files, chosen


def evaluate_files(
    paths: Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    text: str | Path,
    options: EvalOptions = DEFAULT_OPTIONS,
    reporter: Reporter = SILENT,
) -> Evaluation:
    started = time.perf_counter()
    if not options.full and not options.rel_error > 0:
        raise PhiquantError(f"--rel-error must be above 0, not {options.rel_error:g}")
    files, chosen = _resolve(paths, reference)
    content = read_text(text)
    tokens, adds_bos, bos_id = tokenize_text(chosen or files[0], content)
    plan = plan_windows(
        tokens,
        options.ctx,
        adds_bos=adds_bos,
        bos_id=bos_id,
        max_windows=options.max_windows,
        text_name=str(text),
    )
    notes = _context_notes(chosen or files[0], plan)
    if chosen is None:
        notes.append(
            "no F32/BF16/F16 file of this model found: perplexity only (give --ref for KL divergence)"
        )
    estimator = None
    if not options.full:
        estimator = SequentialEstimator(
            len(files),
            plan.n_windows,
            rel_error=options.rel_error,
            is_reference=[_is_reference(f, chosen) for f in files],
            has_reference=chosen is not None,
            min_windows=options.min_windows or MIN_WINDOWS,
            settle_order=options.settle_order,
        )
    with ExitStack() as stack:
        source = None
        if chosen is not None:
            source = stack.enter_context(ReferenceSource(chosen, plan, options.threads, reporter))
        result = evaluate_pass(
            files,
            plan,
            chosen,
            source,
            n_threads=options.threads,
            reporter=reporter,
            memory_budget=options.memory_budget,
            order=None if options.full else window_order(plan.n_windows, options.seed),
            estimator=estimator,
        )
        from_cache, cache = (source.from_cache, source.path) if source else (False, None)
    scores = [_in_text_order(s, result, plan) for s in result.scores]
    reference_scores = (
        _in_text_order(result.reference_scores, result, plan) if result.reference_scores else None
    )
    evaluations = []
    for index, (file, file_scores) in enumerate(zip(files, scores)):
        speed = None
        if options.speed_runs > 0:
            reporter.note(f"measuring speed of {file.path.name}")
            speed = measure_speed(
                file,
                plan.tokens,
                runs=options.speed_runs,
                n_threads=options.threads,
                pp_tokens=options.pp_tokens,
                tg_tokens=options.tg_tokens,
            )
        evaluations.append(
            FileEvaluation(
                path=file.path,
                type=file.file_type,
                file_size=file.file_size,
                n_parameters=file.n_parameters,
                bits_per_weight=file.bits_per_weight,
                perplexity=perplexity(file_scores),
                divergence=divergence(file_scores, reference_scores) if reference_scores else None,
                speed=speed,
                is_reference=_is_reference(file, chosen),
                estimate=estimator.estimate(index) if estimator else None,
            )
        )
    n_vocab = len(files[0].gguf.get("tokenizer.ggml.tokens") or [])
    n_used = len(result.windows)
    return Evaluation(
        text=TextFacts(Path(text), hashlib.sha256(content.encode()).hexdigest(), len(content), len(tokens)),
        ctx=plan.ctx,
        n_windows=n_used,
        n_scored_tokens=n_used * plan.scored_per_window,
        n_vocab=n_vocab,
        uniform_perplexity=uniform_perplexity(n_vocab),
        reference=chosen.path if chosen else None,
        reference_perplexity=perplexity(reference_scores) if reference_scores else None,
        reference_from_cache=from_cache,
        reference_cache=cache,
        files=evaluations,
        seconds=time.perf_counter() - started,
        evaluation_tokens_per_second=n_used * plan.ctx * len(files) / max(result.seconds, 1e-9),
        notes=notes,
        sequential=(
            estimator.summary(seed=options.seed, tokens_per_window=plan.scored_per_window)
            if estimator
            else None
        ),
    )


def _is_reference(file: ModelFile, chosen: ModelFile | None) -> bool:
    return chosen is not None and file.path.resolve() == chosen.path.resolve()


def _in_text_order(scores: TokenScores, result: PassResult, plan: WindowPlan) -> TokenScores:
    """The scores of the windows used, window after window in text order (as a full pass has them), so
    a sequential run that used every window gives a full pass's figures exactly."""
    order = np.argsort(np.asarray(result.windows), kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return scores
    ordered = TokenScores()
    for name in ("nll", "top", "kld", "same_top", "dp_top", "dp_target"):
        values = scores.joined(name)
        if len(values):
            getattr(ordered, name).append(values.reshape(len(order), -1)[order].reshape(-1))
    return ordered


def _context_notes(file: ModelFile, plan: WindowPlan) -> list[str]:
    arch = file.gguf.arch
    notes = []
    trained = file.gguf.get(f"{arch}.context_length")
    if isinstance(trained, int) and plan.ctx > trained:
        notes.append(f"--ctx {plan.ctx} is longer than the {trained} tokens this model was trained for")
    original = file.gguf.get(f"{arch}.rope.scaling.original_context_length")
    if isinstance(original, int) and any(t.name == "rope_factors_long.weight" for t in file.gguf.tensors):
        # llama-model.cpp get_rope_factors: long factors once the per-sequence context exceeds the original
        # (llama.cpp rounds the context up to a multiple of 256 first).
        padded = -(-plan.ctx // 256) * 256
        factors = "long" if padded > original else "short"
        notes.append(
            f"windows of {plan.ctx} tokens run LongRoPE's {factors} factors (original context {original})"
        )
    return notes


def evaluate(
    files: str | Path | Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    text: str | Path | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    reporter: Reporter = SILENT,
) -> Evaluation:
    """Perplexity of each GGUF file over `text` (default: phiquant's held-out text) in windows of
    `options.ctx` tokens, KL divergence and top-token agreement against the reference (default: the
    F32/BF16/F16 file of the same model among or beside the files), speed, size and bits per weight."""
    paths = [files] if isinstance(files, (str, Path)) else list(files)
    return evaluate_files(
        paths, reference=reference, text=text or heldout_text_path(), options=options, reporter=reporter
    )
