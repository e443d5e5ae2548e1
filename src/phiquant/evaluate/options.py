"""What an evaluation can be asked to do, and the defaults (imported without loading llama.cpp)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CONTEXT = 512  # llama-perplexity's default -c
DEFAULT_SPEED_RUNS = 3
DEFAULT_PP_TOKENS = 512  # llama-bench's pp512
DEFAULT_TG_TOKENS = 128  # llama-bench's tg128
DEFAULT_MAX_KLD = 0.05  # nats per token; the rationale is in evaluate/report.py
DEFAULT_REL_ERROR = 0.05  # relative standard error each file's mean KLD is measured to (sequential.py)
DEFAULT_SEED = 0  # of the order sequential evaluation visits windows in


@dataclass(frozen=True)
class EvalOptions:
    ctx: int = DEFAULT_CONTEXT
    max_windows: int | None = None  # llama-perplexity's --chunks; None: the whole text
    threads: int | None = None  # llama.cpp's default when None
    speed_runs: int = DEFAULT_SPEED_RUNS  # 0: do not measure speed
    pp_tokens: int = DEFAULT_PP_TOKENS
    tg_tokens: int = DEFAULT_TG_TOKENS
    full: bool = False  # every window in text order (llama-perplexity's figures) instead of sequential
    rel_error: float = DEFAULT_REL_ERROR
    seed: int = DEFAULT_SEED
    # Sequential evaluation's floor of windows (None: sequential.MIN_WINDOWS) and whether it also waits
    # for the files' order by mean KLD to settle (a ladder's report ranks them; a caller that only needs
    # each file's mean to `rel_error` does not).
    min_windows: int | None = None
    settle_order: bool = True
    # Bytes the files evaluated together may take (weights, KV caches, logits); None: a share of the
    # memory available.  0 evaluates one file at a time, so memory does not grow with the number of files.
    memory_budget: int | None = None


DEFAULT_OPTIONS = EvalOptions()
