"""How a text is cut into perplexity windows: the layout of llama.cpp's perplexity tool.

tools/perplexity/perplexity.cpp (`perplexity()`): the whole text is tokenized once (with BOS when the
vocabulary adds one, no special-token parsing); window i is tokens [i*ctx, (i+1)*ctx); when the
vocabulary adds BOS, each window's first token is replaced by BOS; only the second half is scored, the
logits at positions ctx/2 .. ctx-2 predicting tokens ctx/2+1 .. ctx-1, so every scored token has at least
ctx/2 tokens of context.  Windows run n_batch/ctx at a time as parallel sequences (n_batch 2048 there).

One difference, on purpose: llama.cpp refuses texts shorter than two windows; phiquant needs one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.evaluate.options import DEFAULT_CONTEXT  # noqa: F401  (re-exported)

TOKENS_PER_BATCH = 2048  # llama-perplexity's default -b: windows per batch = 2048 // ctx
MIN_CONTEXT = 16


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one text for one vocabulary, and which of their positions are scored."""

    tokens: np.ndarray  # int32, the tokenized text (BOS first when the vocabulary adds one)
    ctx: int
    n_windows: int
    bos_id: int | None  # replaces each window's first token when the vocabulary adds BOS
    windows_per_batch: int

    @property
    def first_scored(self) -> int:
        """Position whose logits predict the first scored token (ctx/2, as llama.cpp)."""
        return self.ctx // 2

    @property
    def scored_per_window(self) -> int:
        return self.ctx - 1 - self.first_scored

    @property
    def n_scored(self) -> int:
        return self.n_windows * self.scored_per_window

    @property
    def n_evaluated(self) -> int:
        """Tokens run through the model (every position of every window)."""
        return self.n_windows * self.ctx

    @property
    def n_text_windows(self) -> int:
        """Windows in the whole text (`n_windows` may be fewer: --chunks): what window indices refer to."""
        return len(self.tokens) // self.ctx

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        return self.tokens[: self.n_text_windows * self.ctx].reshape(-1, self.ctx)[indices]

    def windows_at(self, indices: np.ndarray) -> np.ndarray:
        """The windows numbered `indices` as an (n, ctx) int32 array, BOS in front where the vocabulary
        adds it."""
        windows = self._rows(np.asarray(indices, dtype=np.int64)).copy()
        if self.bos_id is not None:
            windows[:, 0] = self.bos_id
        return windows

    def targets_at(self, indices: np.ndarray) -> np.ndarray:
        """The scored tokens of the windows numbered `indices`: (n, scored_per_window) int32."""
        return self._rows(np.asarray(indices, dtype=np.int64))[:, self.first_scored + 1 :]

    def window_tokens(self, start: int, stop: int) -> np.ndarray:
        """Windows start..stop-1 as an (n, ctx) int32 array, BOS in front where the vocabulary adds it."""
        return self.windows_at(np.arange(start, stop))

    def targets(self, start: int, stop: int) -> np.ndarray:
        """The scored tokens of windows start..stop-1: (n, scored_per_window) int32."""
        return self.targets_at(np.arange(start, stop))

    def batches(self) -> Iterator[tuple[int, int]]:
        """(start, stop) window ranges, `windows_per_batch` at a time."""
        for start in range(0, self.n_windows, self.windows_per_batch):
            yield start, min(start + self.windows_per_batch, self.n_windows)

    def batches_of(self, order: np.ndarray) -> Iterator[np.ndarray]:
        """Window indices in the given order, `windows_per_batch` at a time."""
        for start in range(0, len(order), self.windows_per_batch):
            yield np.asarray(order[start : start + self.windows_per_batch], dtype=np.int64)


def plan_windows(
    tokens: np.ndarray,
    ctx: int,
    *,
    adds_bos: bool,
    bos_id: int,
    max_windows: int | None = None,
    text_name: str = "the text",
) -> WindowPlan:
    if ctx < MIN_CONTEXT:
        raise PhiquantError(f"--ctx must be at least {MIN_CONTEXT} tokens, not {ctx}")
    if max_windows is not None and max_windows < 1:
        raise PhiquantError(f"--chunks must be at least 1, not {max_windows}")
    available = len(tokens) // ctx
    if available == 0:
        raise PhiquantError(
            f"{text_name} is {len(tokens)} tokens long, shorter than one window of --ctx {ctx}; "
            "give a longer text or a smaller --ctx"
        )
    n_windows = available if max_windows is None else min(available, max_windows)
    return WindowPlan(
        tokens=np.asarray(tokens, dtype=np.int32),
        ctx=ctx,
        n_windows=n_windows,
        bos_id=bos_id if adds_bos else None,
        windows_per_batch=max(1, TOKENS_PER_BATCH // ctx),
    )
