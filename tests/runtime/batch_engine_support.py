"""What the batch engine tests share: the bundled model as a GGUF, a recording job sink, the oracle
(the same request generated alone in its own context) and a way to wait for jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phiquant import api
from phiquant.runtime.batch_engine import BatchEngine, EngineConfig, EngineJob
from phiquant.runtime.generate import Completion, SamplingOptions, TokenLogprob, generate
from phiquant.runtime.llama import LoadedModel
from tests.fixtures.bundled_model import bundled_model_dir

WAIT_SECONDS = 300  # a bound for a stuck engine, far above any real run (even beside a CPU hog)


def bundled_gguf(directory: Path) -> Path:
    return api.convert(bundled_model_dir(), directory / "bundled-f16.gguf", "f16").path


@dataclass
class RecordingSink:
    """Collects one job's events; `on_text` (if set) runs on the engine thread after each piece."""

    pieces: dict[int, list[str]] = field(default_factory=dict)
    completions: dict[int, Completion] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    on_text: Callable[[int], None] | None = None

    def text(self, choice: int, text: str, logprobs: list[TokenLogprob]) -> None:
        self.pieces.setdefault(choice, []).append(text)
        if self.on_text is not None:
            self.on_text(sum(len(p) for p in self.pieces.values()))

    def done(self, choice: int, completion: Completion) -> None:
        self.completions[choice] = completion

    def error(self, error: Exception) -> None:
        self.errors.append(error)

    def released(self) -> None:
        self.finished.set()

    def wait(self) -> Completion:
        assert self.finished.wait(WAIT_SECONDS), "the engine never released the job"
        assert not self.errors, self.errors
        return self.completions[0]


def isolated(
    model: LoadedModel, tokens: Sequence[int], options: SamplingOptions, end_ids: frozenset[int], n_ctx: int
) -> Completion:
    """The oracle: the request alone in a fresh context of `n_ctx` tokens, one token per decode."""
    completion = Completion()
    with model.new_context(n_ctx, n_threads=1) as context:
        for _ in generate(context, tokens, options, end_ids, completion=completion):
            pass
    return completion


def run_jobs(
    engine: BatchEngine, prompts: Sequence[Sequence[int]], options: Sequence[SamplingOptions]
) -> list[Completion]:
    sinks = [RecordingSink() for _ in prompts]
    for tokens, option, sink in zip(prompts, options, sinks):
        engine.submit(EngineJob(tokens, option, sink))
    return [sink.wait() for sink in sinks]


def new_engine(model: LoadedModel, end_ids: frozenset[int], n_sequences: int, **config: int) -> BatchEngine:
    values = {"sequence_tokens": 512, "n_batch": 512, "n_threads": 1} | config
    return BatchEngine(model, EngineConfig(n_sequences, **values), end_ids)  # type: ignore[arg-type]
