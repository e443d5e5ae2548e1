"""What a generation samples with: the options every front end (CLI, server, API) fills in.

Kept free of llama.cpp so the command-line parser can build and check them without loading it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from phiquant.errors import PhiquantError

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_SEED = 0xFFFFFFFE  # 0xFFFFFFFF is LLAMA_DEFAULT_SEED, which asks llama.cpp for a random seed


def random_seed() -> int:
    """A seed for runs that gave none, drawn here (not by llama.cpp) so it can be reported and reused."""
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None  # None: a random seed (see random_seed)
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # A llama.cpp GBNF grammar (root rule `root`) the output must follow: JSON schemas, forced tool calls.
    grammar: str | None = None
    # Log-probabilities of each sampled token and of its `logprobs` most likely alternatives (None: none).
    logprobs: int | None = None
    # Control tokens whose text belongs in the output (llama-server's "preserved tokens"): the markers a
    # reply is parsed by, such as Phi-4-mini's <|tool_call|> or a reasoning model's <think>.
    preserved_tokens: frozenset[int] = frozenset()

    def validate(self, n_vocab: int | None = None) -> None:
        if not 0 <= self.temperature <= 100:
            raise PhiquantError(f"temperature must be in [0, 100], not {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise PhiquantError(f"top_p must be in [0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise PhiquantError(f"top_k must be >= 0, not {self.top_k}")
        if self.max_tokens < 1:
            raise PhiquantError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise PhiquantError(f"seed must be in [0, {MAX_SEED}], not {self.seed}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise PhiquantError(f"{name} must be in [-2, 2], not {getattr(self, name)}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise PhiquantError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], not {self.logprobs}")
        for token, bias in self.logit_bias:
            if n_vocab is not None and not 0 <= token < n_vocab:
                raise PhiquantError(f"logit_bias names token {token}; the vocabulary has ids 0-{n_vocab - 1}")
            if not -100 <= bias <= 100:
                raise PhiquantError(f"logit_bias values must be in [-100, 100], not {bias}")
