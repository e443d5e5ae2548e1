"""The steps of tools/train_bundled_model.py, from the Debian package to the model card."""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece
import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Phi3ForCausalLM

from . import evaluation, model_card
from .corpus_splits import CorpusSplit, heldout_text, split_documents
from .debian_corpus import (
    PYTHON_DOCS,
    CorpusSource,
    TrainingSetupError,
    download_package,
    extract_package,
    list_source_files,
    psf_license_text,
    verify_package,
)
from .model_files import (
    ModelShape,
    generation_config,
    parameter_count,
    phi35_config,
    save_bf16_safetensors,
    write_json,
)
from .rst_document import PlainDocument, collect_label_titles, render_document
from .shipped_texts import LICENSE_FILE, write_shipped_texts
from .token_stream import TrainingStream
from .tokenizer_files import (
    END_OF_GENERATION_TOKENS,
    EOS_TOKEN,
    added_token_ids,
    padded_vocab_size,
    train_sentencepiece,
    write_tokenizer_files,
)
from .trainer import (
    TrainingPlan,
    batch_at,
    make_optimizer,
    precision,
    process_cpu_seconds,
    save_log_line,
    train,
)

DESCRIPTION = "Train phiquant's bundled default model (see tools/train_bundled_model.py)."
DEFAULT_NAME = "phiquant-tiny-phi35-pydocs"
REPOSITORY = Path(__file__).resolve().parents[2]
SAMPLE_QUESTIONS = ["What is a list in Python?", "What does the function len do?", "What is a dictionary?"]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPOSITORY / "src/phiquant/bundled" / DEFAULT_NAME,
        help="model directory to write (replaced at the end of a successful run)",
    )
    parser.add_argument(
        "--texts-dir", type=Path, help="also write heldout.txt, calibration.txt and provenance here"
    )
    parser.add_argument(
        "--name", help="model name in config.json and the card (default: the --out folder name)"
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=2400, help="optimizer steps of 4096 tokens (default 2400)"
    )
    budget.add_argument(
        "--minutes", type=float, help="size the step count to this training time, measured here"
    )
    parser.add_argument("--layers", type=int, default=ModelShape.layers)
    parser.add_argument("--hidden-size", type=int, default=ModelShape.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=ModelShape.intermediate_size)
    parser.add_argument(
        "--vocab-size", type=int, default=8000, help="SentencePiece pieces (chat tokens come on top)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--float32",
        action="store_true",
        help="train without BF16 autocast: for CPUs without BF16 matrix instructions (AVX512-BF16/AMX), "
        "where BF16 matmuls run up to 100x slower than float32; the weights differ from a BF16-autocast run",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="downloads, checkpoints and logs (default under build/)"
    )
    corpus = parser.add_mutually_exclusive_group()
    corpus.add_argument("--corpus-deb", type=Path, help=f"a local copy of {PYTHON_DOCS.deb_filename}")
    corpus.add_argument(
        "--corpus-dir", type=Path, help="an extracted package root, or its html/_sources folder"
    )
    parser.add_argument(
        "--allow-unpinned-corpus", action="store_true", help="accept a .deb with another sha256"
    )
    return parser.parse_args(argv)


def obtain_corpus(arguments: argparse.Namespace, work_dir: Path) -> CorpusSource:
    if arguments.corpus_dir:
        return _source_from_directory(arguments.corpus_dir)
    deb_path = arguments.corpus_deb or download_package(PYTHON_DOCS, work_dir / "download")
    if not arguments.allow_unpinned_corpus:
        verify_package(deb_path, PYTHON_DOCS)
    return extract_package(deb_path, PYTHON_DOCS, work_dir / "extracted")


def _source_from_directory(directory: Path) -> CorpusSource:
    nested = directory / PYTHON_DOCS.sources_dir
    sources = nested if nested.is_dir() else directory
    copyright_file = directory / PYTHON_DOCS.copyright_file
    return CorpusSource(
        PYTHON_DOCS.name,
        f"{PYTHON_DOCS.version} (extracted directory, unverified)",
        "",
        sources,
        copyright_file if copyright_file.exists() else None,
    )


def render_corpus(source: CorpusSource) -> list[PlainDocument]:
    sources = list_source_files(source.sources_dir)
    label_titles: dict[str, str] = {}
    for text in sources.values():
        label_titles.update(collect_label_titles(text))
    return [render_document(name, text, label_titles) for name, text in sources.items()]


def license_text(source: CorpusSource) -> str:
    if source.copyright_file is None:
        raise TrainingSetupError(
            "the corpus directory has no Debian copyright file to take the PSF license from"
        )
    return psf_license_text(source.copyright_file.read_text(encoding="utf-8"))


def build_tokenizer(
    split: CorpusSplit, vocab_size: int, threads: int, work_dir: Path, export_dir: Path, shape: ModelShape
) -> Path:
    """SentencePiece trained on the training documents only, written as Phi-3-style tokenizer files."""
    lines_file = work_dir / "tokenizer-training.txt"
    lines_file.write_text("".join(document.text for document in split.train), encoding="utf-8")
    model = train_sentencepiece(lines_file, work_dir / "sentencepiece", vocab_size, threads)
    write_tokenizer_files(model, export_dir, model_max_length=shape.max_context)
    return model


def training_stream(split: CorpusSplit, export_dir: Path, seed: int) -> TrainingStream:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(export_dir / "tokenizer.model"))
    transformers_tokenizer = AutoTokenizer.from_pretrained(export_dir)
    end_of_text_id = transformers_tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    return TrainingStream(
        split.train,
        processor,
        Tokenizer.from_file(str(export_dir / "tokenizer.json")),
        lambda text: transformers_tokenizer(text, add_special_tokens=False)["input_ids"],
        end_of_text_id,
        seed,
    )


def steps_for_time_budget(
    model: Phi3ForCausalLM, stream: TrainingStream, seed: int, minutes: float, bf16_autocast: bool, log
) -> int:
    """Time a few steps (long ones included) on a throwaway copy of the model and fit the budget."""
    plan = TrainingPlan(
        steps=1, seed=seed, data_fingerprint=stream.fingerprint(), bf16_autocast=bf16_autocast
    )
    scratch = copy.deepcopy(model)
    optimizer = make_optimizer(scratch, plan)
    probe_steps = 2 * plan.long_sequence_every
    started = time.monotonic()
    for step in range(probe_steps):
        batch = batch_at(stream, plan, step)
        with precision(plan):
            scratch(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds_per_step = (time.monotonic() - started) / probe_steps
    steps = max(plan.warmup_steps + 1, int(minutes * 60 / seconds_per_step))
    log(
        {
            "time_budget_minutes": minutes,
            "seconds_per_step": round(seconds_per_step, 3),
            "chosen_steps": steps,
        }
    )
    return steps


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        run(arguments)
    except TrainingSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run(arguments: argparse.Namespace) -> None:
    torch.set_num_threads(arguments.threads)
    name = arguments.name or arguments.out.name
    work_dir = arguments.work_dir or REPOSITORY / "build/bundled-training" / f"{name}-seed{arguments.seed}"
    export_dir = work_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    log = save_log_line(work_dir / "training-log.jsonl")
    clock = RunClock.start(arguments.threads)

    source, split = prepare_corpus(arguments, work_dir, export_dir, log)
    shape = ModelShape(arguments.hidden_size, arguments.intermediate_size, arguments.layers)
    vocabulary = write_model_files(split, shape, name, arguments, work_dir, export_dir)

    torch.manual_seed(arguments.seed)
    model = Phi3ForCausalLM(AutoConfig.from_pretrained(export_dir))
    stream = training_stream(split, export_dir, arguments.seed)
    steps = arguments.steps
    if arguments.minutes:
        steps = steps_for_time_budget(
            model, stream, arguments.seed, arguments.minutes, not arguments.float32, log
        )
    plan = TrainingPlan(
        steps=steps,
        seed=arguments.seed,
        data_fingerprint=stream.fingerprint(),
        bf16_autocast=not arguments.float32,
    )
    log(
        {
            "plan": asdict(plan),
            "parameters": parameter_count(shape, vocabulary.vocab_size),
            "preparation_s": clock.facts()["wall_s"],
        }
    )
    heldout_ids = vocabulary.processor.encode(heldout_text(split.heldout))
    windows = evaluation.heldout_windows(heldout_ids, plan.sequence_length, count=16)
    result = train(model, stream, plan, windows, work_dir / "checkpoint.pt", log)

    save_bf16_safetensors(model, export_dir / "model.safetensors")
    summary = model_card.TrainingSummary(
        name=name,
        shape=shape,
        vocab_size=vocabulary.vocab_size,
        tokenizer_tokens=vocabulary.token_count,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        weight_bytes=(export_dir / "model.safetensors").stat().st_size,
        source=source,
        split=split,
        plan=plan,
        result=result,
        evaluation=measure_exported_model(export_dir, heldout_ids, plan),
        epoch_tokens=stream.first_epoch_length(),
        run=clock.facts(),
        command=" ".join(["python", "tools/train_bundled_model.py", *(sys.argv[1:])]),
    )
    model_card.write(export_dir, summary)
    log({"done": True, **summary.run})
    _replace_directory(export_dir, arguments.out)


def prepare_corpus(
    arguments: argparse.Namespace, work_dir: Path, export_dir: Path, log
) -> tuple[CorpusSource, CorpusSplit]:
    """The rendered, split corpus; the shipped texts and the PSF license written where they belong."""
    source = obtain_corpus(arguments, work_dir)
    split = split_documents(render_corpus(source))
    log(
        {
            "documents": {
                "train": len(split.train),
                "heldout": len(split.heldout),
                "calibration": len(split.calibration),
            }
        }
    )
    psf_license = license_text(source)
    if arguments.texts_dir:
        write_shipped_texts(split, source, psf_license, arguments.texts_dir)
    (export_dir / LICENSE_FILE).write_text(psf_license, encoding="utf-8")
    return source, split


@dataclass(frozen=True)
class Vocabulary:
    processor: sentencepiece.SentencePieceProcessor
    token_count: int  # SentencePiece pieces + chat tokens
    vocab_size: int  # embedding rows (padded)


def write_model_files(
    split: CorpusSplit,
    shape: ModelShape,
    name: str,
    arguments: argparse.Namespace,
    work_dir: Path,
    export_dir: Path,
) -> Vocabulary:
    """Tokenizer files, config.json and generation_config.json (everything but the weights)."""
    sentencepiece_model = build_tokenizer(
        split, arguments.vocab_size, arguments.threads, work_dir, export_dir, shape
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    token_ids = added_token_ids(processor.get_piece_size())
    vocab_size = padded_vocab_size(processor.get_piece_size())
    end_of_generation = [token_ids[token] for token in END_OF_GENERATION_TOKENS]
    write_json(export_dir / "config.json", phi35_config(shape, name, vocab_size, token_ids[EOS_TOKEN]))
    write_json(
        export_dir / "generation_config.json", generation_config(end_of_generation, token_ids[EOS_TOKEN])
    )
    return Vocabulary(processor, processor.get_piece_size() + len(token_ids), vocab_size)


@dataclass(frozen=True)
class RunClock:
    """Wall and CPU time since the start: their ratio shows how much of the machine this run got."""

    wall_started: float
    cpu_started: float
    threads: int

    @classmethod
    def start(cls, threads: int) -> RunClock:
        return cls(time.monotonic(), process_cpu_seconds(), threads)

    def facts(self) -> dict:
        return {
            "wall_s": round(time.monotonic() - self.wall_started, 1),
            "process_cpu_s": round(process_cpu_seconds() - self.cpu_started, 1),
            "threads": self.threads,
            "load_average_now": [round(value, 2) for value in os.getloadavg()],
        }


def measure_exported_model(
    export_dir: Path, heldout_ids: list[int], plan: TrainingPlan
) -> model_card.Evaluation:
    """Perplexity at the training context and at the long context, and greedy answers, from the files."""
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model.eval()
    return model_card.Evaluation(
        short_context=evaluation.perplexity(model, heldout_ids, plan.sequence_length),
        long_context=evaluation.perplexity(model, heldout_ids, plan.long_sequence_length),
        answers={
            question: evaluation.greedy_chat_answer(model, tokenizer, question)
            for question in SAMPLE_QUESTIONS
        },
    )


def _replace_directory(source: Path, destination: Path) -> None:
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, destination)
