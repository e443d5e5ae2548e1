"""Token generation: sampling with llama.cpp's own samplers, stopping where the model stops.

Generation ends on every end-of-generation id of the model (Phi-3's <|end|>, <|assistant|> and
<|endoftext|> alike), and those tokens are never part of the returned text.  Text is streamed as
complete UTF-8 characters; user stop strings are held back until it is clear they do not match.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp as lc

from phiquant.errors import PhiquantError
from phiquant.runtime.llama import Context

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.temperature < 0:
            raise PhiquantError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PhiquantError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise PhiquantError(f"top_k must be >= 0, not {self.top_k}")
        if self.max_tokens < 1:
            raise PhiquantError(f"max_tokens must be at least 1, not {self.max_tokens}")


@dataclass
class Completion:
    """What a finished generation produced."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = ""  # "stop" (end token or stop string), "length", or "cancelled"

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


class Sampler:
    """A llama.cpp sampler chain: top-k, top-p, temperature, then a seeded draw (greedy at t=0)."""

    def __init__(self, options: SamplingOptions):
        options.validate()
        self._chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if options.temperature == 0:
            lc.llama_sampler_chain_add(self._chain, lc.llama_sampler_init_greedy())
            return
        if options.top_k > 0:
            lc.llama_sampler_chain_add(self._chain, lc.llama_sampler_init_top_k(options.top_k))
        if options.top_p < 1:
            lc.llama_sampler_chain_add(self._chain, lc.llama_sampler_init_top_p(options.top_p, 1))
        lc.llama_sampler_chain_add(self._chain, lc.llama_sampler_init_temp(options.temperature))
        seed = DEFAULT_SEED if options.seed is None else options.seed & 0xFFFFFFFF
        lc.llama_sampler_chain_add(self._chain, lc.llama_sampler_init_dist(seed))

    def sample(self, context: Context) -> int:
        return int(lc.llama_sampler_sample(self._chain, context._ctx, -1))

    def close(self) -> None:
        if self._chain:
            lc.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


class _StopStringFilter:
    """Releases text only once no stop string can still start inside it."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        for stop in self.stops:
            index = self.pending.find(stop)
            if index >= 0:
                released, self.pending = self.pending[:index], ""
                return released, True
        hold = max((self._overlap(stop) for stop in self.stops), default=0)
        released = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(released) :]
        return released, False

    def _overlap(self, stop: str) -> int:
        for length in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:length]):
                return length
        return 0

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def generate(
    context: Context,
    prompt_tokens: Sequence[int],
    options: SamplingOptions,
    end_ids: frozenset[int],
    *,
    cancel: threading.Event | None = None,
    completion: Completion | None = None,
) -> Iterator[str]:
    """Evaluate the prompt, then yield text as it is generated.  `completion` (if given) is filled
    in with the tokens, the full text and the finish reason."""
    result = completion if completion is not None else Completion()
    result.prompt_tokens = len(prompt_tokens)
    if not prompt_tokens:
        raise PhiquantError("the prompt is empty")
    if len(prompt_tokens) >= context.n_ctx:
        raise PhiquantError(f"the prompt has {len(prompt_tokens)} tokens; the context holds {context.n_ctx}")
    sampler = Sampler(options)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = _StopStringFilter(options.stop)
    model = context.model
    try:
        context.decode(list(prompt_tokens))
        while True:
            if cancel is not None and cancel.is_set():
                result.finish_reason = "cancelled"
                break
            token = sampler.sample(context)
            if token in end_ids or model.is_end_of_generation(token):
                result.finish_reason = "stop"
                break
            result.tokens.append(token)
            text, hit_stop = stops.push(decoder.decode(model.token_piece(token)))
            if text:
                result.text += text
                yield text
            if hit_stop:
                result.finish_reason = "stop"
                return
            if len(result.tokens) >= options.max_tokens or context.n_past + 1 >= context.n_ctx:
                result.finish_reason = "length"
                break
            context.decode([token])
        tail, _ = stops.push(decoder.decode(b"", final=True))
        tail += stops.flush()
        if tail:
            result.text += tail
            yield tail
    finally:
        sampler.close()
