"""`phiquant demo`: the whole tool on the bundled model, in a few minutes on a laptop.

Quantize the bundled checkpoint to F16 and a ladder of types in one pass, measure every file against
the F16 file on the held-out text, write the report and plot, then answer a chat prompt with the F16
file and with the recommended one, so the difference a quantization makes can be read as well as
measured.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phiquant.bundled import bundled_model_dir, heldout_text_path
from phiquant.evaluate.options import DEFAULT_MAX_KLD, EvalOptions
from phiquant.evaluate.report import Report
from phiquant.gguf_io import read_gguf
from phiquant.progress import SILENT, Reporter
from phiquant.runtime.generate import Completion, SamplingOptions, generate
from phiquant.runtime.loader import load_model
from phiquant.runtime.prompt import PromptTokenizer
from phiquant.workflows.quantize import quantize
from phiquant.workflows.report import report_files

DEMO_LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
DEMO_OUTPUT_DIR = Path("phiquant-demo")
# 64 windows of 512 tokens: 16320 scored tokens per file, a third of the held-out text, which keeps the
# standard error of each mean KLD near 1% while the demo stays well under five minutes on two cores.
DEMO_CHUNKS = 64
DEMO_PROMPT = "How do I read a file line by line in Python?"
DEMO_MAX_TOKENS = 96


@dataclass
class Answer:
    file: Path
    type: str
    text: str
    tokens: int
    seconds: float


@dataclass
class DemoResult:
    output_dir: Path
    model_dir: Path
    report: Report
    prompt: str
    answers: list[Answer]
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)


def answer_prompt(
    path: Path, file_type: str, prompt: str, *, max_tokens: int, threads: int | None = None
) -> Answer:
    """A greedy reply from the file, prompted through its own chat template."""
    began = time.perf_counter()
    with load_model(path) as model:
        tokenizer = PromptTokenizer(model, read_gguf(path))
        tokens = tokenizer.chat_tokens([{"role": "user", "content": prompt}])
        completion = Completion()
        with model.new_context(len(tokens) + max_tokens + 1, n_threads=threads) as context:
            options = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
            for _ in generate(context, tokens, options, tokenizer.end_ids, completion=completion):
                pass
    return Answer(
        path, file_type, completion.text.strip(), completion.completion_tokens, time.perf_counter() - began
    )


def run_demo(
    output_dir: str | Path = DEMO_OUTPUT_DIR,
    *,
    ladder: Sequence[str] = DEMO_LADDER,
    chunks: int | None = DEMO_CHUNKS,
    prompt: str = DEMO_PROMPT,
    max_tokens: int = DEMO_MAX_TOKENS,
    max_kld: float = DEFAULT_MAX_KLD,
    threads: int | None = None,
    speed_runs: int = 3,
    reporter: Reporter = SILENT,
) -> DemoResult:
    began = time.perf_counter()
    steps: dict[str, float] = {}
    model_dir = bundled_model_dir()
    directory = Path(output_dir)
    written = quantize(model_dir, ["F16", *ladder], directory, threads=threads, reporter=reporter)
    steps["quantize"] = time.perf_counter() - began
    paths = [f.path for f in written.files]
    reference = paths[0]
    # Every window of the demo's text, as the README's table was measured: the demo shows the figures
    # themselves, not an estimate of them (`phiquant report` is sequential by default).
    options = EvalOptions(max_windows=chunks, threads=threads, speed_runs=speed_runs, full=True)
    report = report_files(
        paths,
        reference=reference,
        text=heldout_text_path(),
        options=options,
        max_kld=max_kld,
        output_dir=directory,
        reporter=reporter,
    )
    steps["evaluate"] = time.perf_counter() - began - steps["quantize"]
    chosen = [reference] + ([report.recommended] if report.recommended not in (None, reference) else [])
    types = {f.path: f.type for f in report.evaluation.files}
    answers = [
        answer_prompt(p, types[p], prompt, max_tokens=max_tokens, threads=threads) for p in chosen if p
    ]
    steps["chat"] = time.perf_counter() - began - steps["quantize"] - steps["evaluate"]
    return DemoResult(directory, model_dir, report, prompt, answers, time.perf_counter() - began, steps)
