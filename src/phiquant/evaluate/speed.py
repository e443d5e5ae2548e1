"""Prompt-processing and generation speed of a file, measured with phiquant's runtime like llama-bench.

pp: a prompt of `pp_tokens` tokens decoded in one call into an empty context.  tg: `tg_tokens` tokens
decoded one at a time (what generating costs, without the sampler).  Each is the median of `runs`
timed runs after one untimed warm-up.  Timings on a shared machine vary: they are reported, never judged.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from phiquant.evaluate.files import ModelFile
from phiquant.evaluate.options import DEFAULT_PP_TOKENS, DEFAULT_TG_TOKENS
from phiquant.runtime.llama import Context
from phiquant.runtime.loader import load_model


@dataclass(frozen=True)
class Speed:
    pp_tokens_per_second: float
    tg_tokens_per_second: float
    pp_tokens: int
    tg_tokens: int
    runs: int
    threads: int


def _timed(action: object) -> float:
    began = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - began


def _prompt(context: Context, tokens: list[int]) -> None:
    context.clear()
    context.decode(tokens)


def _generation(context: Context, tokens: list[int]) -> None:
    context.clear()
    for token in tokens:
        context.decode([token])


def measure_speed(
    file: ModelFile,
    sample_tokens: np.ndarray,
    *,
    runs: int,
    n_threads: int | None,
    pp_tokens: int = DEFAULT_PP_TOKENS,
    tg_tokens: int = DEFAULT_TG_TOKENS,
) -> Speed:
    """`sample_tokens`: text tokens to feed (repeated if the text is shorter)."""
    needed = max(pp_tokens, tg_tokens)
    repeats = -(-needed // max(len(sample_tokens), 1))
    tokens = np.tile(np.asarray(sample_tokens, dtype=np.int64), repeats)[:needed].tolist()
    prompt, generated = tokens[:pp_tokens], tokens[:tg_tokens]
    with (
        load_model(file.path) as model,
        model.new_context(needed, n_batch=pp_tokens, n_threads=n_threads) as context,
    ):
        _prompt(context, prompt)
        _generation(context, generated[:8])
        pp = [_timed(lambda: _prompt(context, prompt)) for _ in range(runs)]
        tg = [_timed(lambda: _generation(context, generated)) for _ in range(runs)]
        threads = context.n_threads
    return Speed(
        pp_tokens_per_second=pp_tokens / statistics.median(pp),
        tg_tokens_per_second=tg_tokens / statistics.median(tg),
        pp_tokens=pp_tokens,
        tg_tokens=tg_tokens,
        runs=runs,
        threads=threads,
    )
