"""The bundled model through phiquant: held-out perplexity (llama.cpp = transformers, far below a model
that learned nothing), an English answer from its F16 file, and the demo end to end.

These need the trained model in phiquant.bundled; they are skipped, saying so, in a checkout without it.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import torch

from phiquant import api
from phiquant.bundled import heldout_text_path
from phiquant.evaluate.evaluation import tokenize_text
from phiquant.evaluate.files import describe
from phiquant.evaluate.options import EvalOptions
from phiquant.workflows.demo import DEMO_PROMPT, answer_prompt
from tests.cli.run import run_phiquant
from tests.evaluate.test_perplexity_oracle import transformers_window_nll
from tests.fixtures.bundled_model import bundled_model_dir
from tests.fixtures.transformers_reference import load_transformers_model

MODEL = bundled_model_dir()

WINDOWS = 8
CTX = 512  # the bundled model's original context: LongRoPE short factors, in both implementations
COMMON_WORDS = {
    "the",
    "a",
    "an",
    "is",
    "are",
    "to",
    "of",
    "and",
    "in",
    "you",
    "it",
    "for",
    "with",
    "file",
    "can",
}


@pytest.fixture(scope="module")
def bundled_gguf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundled")
    return {t: api.convert(MODEL, directory / f"bundled-{t.upper()}.gguf", t).path for t in ("f32", "f16")}


@pytest.mark.slow
def test_heldout_perplexity_matches_transformers_and_is_far_below_uniform(bundled_gguf) -> None:
    text = heldout_text_path().read_text(encoding="utf-8")
    evaluation = api.evaluate(
        bundled_gguf["f32"],
        text=heldout_text_path(),
        options=EvalOptions(ctx=CTX, max_windows=WINDOWS, speed_runs=0),
    )
    tokens, adds_bos, _ = tokenize_text(describe(bundled_gguf["f32"]), text)
    assert not adds_bos
    losses = transformers_window_nll(
        load_transformers_model(MODEL, torch.float32), tokens.tolist(), CTX, WINDOWS
    )
    expected = math.exp(sum(losses) / len(losses))
    measured = evaluation.files[0].perplexity.value
    print(
        f"bundled held-out perplexity: phiquant (llama.cpp) {measured:.3f}, transformers {expected:.3f}, "
        f"uniform over the vocabulary {evaluation.uniform_perplexity:.0f}"
    )
    assert measured == pytest.approx(expected, rel=0.01)
    assert measured < evaluation.uniform_perplexity / 50


@pytest.mark.slow
def test_f16_answer_is_recognisable_english(bundled_gguf) -> None:
    answer = answer_prompt(bundled_gguf["f16"], "F16", DEMO_PROMPT, max_tokens=64)
    print(f"F16 answer to {DEMO_PROMPT!r}: {answer.text}")
    words = re.findall(r"[A-Za-z']+", answer.text)
    # A whole sentence: the model answers briefly and ends its turn ("The `smtplib` module is a subclass
    # of `Cursor`." at the time of writing), so count words, not length.
    assert len(words) >= 6
    printable = sum(ch.isascii() for ch in answer.text) / max(len(answer.text), 1)
    assert printable > 0.95  # not the random byte soup of an untrained model
    assert len({w.lower() for w in words} & COMMON_WORDS) >= 3


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_its_wall_time(tmp_path) -> None:
    began = time.perf_counter()
    # Fewer windows and no speed runs than the demo's defaults: every step still runs end to end.
    arguments = ("--chunks", "8", "--speed-runs", "0")
    result = run_phiquant("demo", "-o", tmp_path / "demo", *arguments, "--json", timeout=900)
    seconds = time.perf_counter() - began
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    files = document["report"]["evaluation"]["files"]
    assert [f["type"] for f in files] == ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
    assert document["report"]["recommended"] is not None
    assert sorted(p.suffix for p in (tmp_path / "demo").glob("*-report.*")) == [".json", ".md", ".png"]
    print(f"phiquant demo took {seconds:.0f} s (steps: {document['step_seconds']})")
