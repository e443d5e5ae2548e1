"""Token generation: sampling with llama.cpp's own samplers, stopping where the model stops.

Generation ends on every end-of-generation id of the model (Phi-3's <|end|>, <|assistant|> and
<|endoftext|> alike), and those tokens are never part of the returned text.  Text is streamed as
complete UTF-8 characters; user stop strings are held back until it is clear they do not match.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp as lc
import numpy as np

from phiquant.errors import PhiquantError
from phiquant.runtime.llama import Context, LoadedModel
from phiquant.runtime.sampling import MAX_SEED, SamplingOptions, random_seed

# llama_token_data: {llama_token id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

__all__ = [
    "MAX_SEED", "Completion", "Sampler", "SamplingOptions", "TokenLogprob", "check_grammar", "generate",
    "random_seed", "token_logprob",
]  # fmt: skip


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability under the model, with the most likely tokens at that step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


@dataclass
class Completion:
    """What a finished generation produced."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were already in the cache (not evaluated)
    seed: int = 0  # the seed the sampler used (drawn at random when none was given)
    # "stop" (end token or stop string), "length" (max_tokens or the context is full),
    # "time" (the deadline passed) or "cancelled"
    finish_reason: str = ""
    end_token: int | None = None  # the end-of-generation id that ended it (never part of tokens or text)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, when options.logprobs is set
    prompt_seconds: float = 0.0  # evaluating the prompt
    generation_seconds: float = 0.0  # sampling and evaluating the new tokens

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


class Sampler:
    """A llama.cpp sampler chain: logit bias, a grammar, penalties, top-k, top-p, temperature, then a seeded
    draw (greedy at t=0).  The same options and seed give the same tokens for the same logits.

    One Sampler serves one sequence; `sample(context, index)` reads that sequence's row of logits, so a
    batched decode of several sequences samples each with its own Sampler."""

    def __init__(
        self, options: SamplingOptions, n_vocab: int, seed: int, *, model: LoadedModel | None = None
    ):
        options.validate(n_vocab)
        self._chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if options.logit_bias:
            entries = (lc.llama_logit_bias * len(options.logit_bias))()
            for entry, (token, bias) in zip(entries, options.logit_bias):
                entry.token, entry.bias = token, bias
            self._add(lc.llama_sampler_init_logit_bias(n_vocab, len(options.logit_bias), entries))
        self._grammar: lc.llama_sampler_p | None = None
        if options.grammar is not None:
            if model is None:
                raise ValueError("a grammar needs the model's vocabulary")
            self._grammar = _grammar_sampler(model, options.grammar)
        if options.frequency_penalty or options.presence_penalty:
            # Only sampled tokens are accepted into the penalty window, so the prompt is not penalised
            # (OpenAI's penalties count the generated text).
            self._add(
                lc.llama_sampler_init_penalties(
                    n_vocab, options.max_tokens, 1.0, options.frequency_penalty, options.presence_penalty
                )
            )
        if options.temperature == 0:
            self._add(lc.llama_sampler_init_greedy())
            return
        if options.top_k > 0:
            self._add(lc.llama_sampler_init_top_k(options.top_k))
        if options.top_p < 1:
            self._add(lc.llama_sampler_init_top_p(options.top_p, 1))
        self._add(lc.llama_sampler_init_temp(options.temperature))
        self._add(lc.llama_sampler_init_dist(seed))

    def _add(self, sampler: lc.llama_sampler_p) -> None:
        lc.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, context: Context, index: int = -1) -> int:
        """The next token from row `index` of the last decode's logits (-1: the last row)."""
        if self._grammar is None:
            return int(lc.llama_sampler_sample(self._chain, context._ctx, index))
        # As llama.cpp's common_sampler_sample (and so llama-server): draw without the grammar, and
        # only when the grammar refuses that token filter the whole vocabulary and draw again.  Checking
        # one token is far cheaper than matching every piece of a 200k vocabulary against the grammar;
        # either way the token drawn is one the grammar allows.
        logits = logits_row(context, index)
        token = self._draw(logits, grammar_first=False)
        if not self._grammar_allows(token):
            token = self._draw(logits, grammar_first=True)
        lc.llama_sampler_accept(self._grammar, token)
        lc.llama_sampler_accept(self._chain, token)
        return token

    def _draw(self, logits: np.ndarray, *, grammar_first: bool) -> int:
        candidates = np.empty(len(logits), dtype=_TOKEN_DATA)
        candidates["id"] = np.arange(len(logits), dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = lc.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), len(logits), -1, False
        )
        if grammar_first:
            lc.llama_sampler_apply(self._grammar, ctypes.byref(array))
        lc.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def _grammar_allows(self, token: int) -> bool:
        single = (lc.llama_token_data * 1)()
        single[0] = lc.llama_token_data(token, 1.0, 0.0)
        array = lc.llama_token_data_array(single, 1, -1, False)
        lc.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return math.isfinite(single[0].logit)

    def close(self) -> None:
        if self._chain:
            lc.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            lc.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()


def _grammar_sampler(model: LoadedModel, grammar: str) -> lc.llama_sampler_p:
    sampler: lc.llama_sampler_p = lc.llama_sampler_init_grammar(model._vocab, grammar.encode(), b"root")
    if not sampler:
        raise PhiquantError("llama.cpp could not parse the grammar (see its log with PHIQUANT_LLAMA_LOG=1)")
    return sampler


def check_grammar(model: LoadedModel, grammar: str) -> None:
    """Raises PhiquantError unless llama.cpp's grammar parser accepts `grammar`."""
    lc.llama_sampler_free(_grammar_sampler(model, grammar))


def logits_row(context: Context, index: int) -> np.ndarray:
    """Row `index` of the last decode's logits (-1: the last row), as a view into llama.cpp's buffer."""
    pointer = lc.llama_get_logits_ith(context._ctx, index)
    return np.ctypeslib.as_array(
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(context.model.n_vocab,)
    )


def token_logprob(context: Context, index: int, token: int, top_n: int) -> TokenLogprob:
    """log_softmax of the raw logits in row `index` of the last decode (before any bias, grammar or
    temperature, as OpenAI and llama-server report them): the chosen token's and the top_n best."""
    n_vocab = context.model.n_vocab
    logits = logits_row(context, index).astype(np.float64)
    peak = logits.max()
    logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(-logprobs, top_n - 1)[:top_n] if top_n < n_vocab else np.arange(n_vocab)
        ordered = sorted(best.tolist(), key=lambda t: (-logprobs[t], t))
        top = tuple((int(t), float(logprobs[t])) for t in ordered)
    return TokenLogprob(token, float(logprobs[token]), top)


class StopStringFilter:
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
    reuse_prefix: bool = False,
    deadline: float | None = None,
    evaluate: Callable[[Context], None] | None = None,
) -> Iterator[str]:
    """Evaluate the prompt, then yield text as it is generated.  `completion` (if given) is filled
    in with the tokens, the full text and the finish reason.

    The context starts empty unless `reuse_prefix`: then the keys and values of the longest prefix
    the context already holds (an earlier chat turn) are kept and only the rest is evaluated.
    `deadline` (time.monotonic()) ends generation with finish_reason "time".  `evaluate` fills the
    context in place of decoding `prompt_tokens` (a prompt with images, whose positions they are)."""
    result = completion if completion is not None else Completion()
    result.prompt_tokens = len(prompt_tokens)
    if not prompt_tokens:
        raise PhiquantError("the prompt is empty")
    if len(prompt_tokens) >= context.n_ctx:
        raise PhiquantError(
            f"the prompt has {len(prompt_tokens)} tokens; the context holds {context.n_ctx} "
            "(a larger --ctx, or a shorter prompt)"
        )
    result.seed = random_seed() if options.seed is None else options.seed
    model = context.model
    sampler = Sampler(options, model.n_vocab, result.seed, model=model)
    try:
        started = time.perf_counter()
        if evaluate is not None:
            evaluate(context)
        else:
            result.cached_tokens = _evaluate_prompt(context, prompt_tokens, reuse_prefix)
        result.prompt_seconds = time.perf_counter() - started
        try:
            yield from _sample_loop(context, sampler, options, end_ids, result, cancel, deadline)
        finally:
            result.generation_seconds = time.perf_counter() - started - result.prompt_seconds
    finally:
        sampler.close()


def _evaluate_prompt(context: Context, prompt_tokens: Sequence[int], reuse_prefix: bool) -> int:
    """Evaluate what the context does not hold yet; returns how many prompt tokens it already held."""
    kept = common_prefix_length(context.tokens, prompt_tokens) if reuse_prefix else 0
    # At least the last prompt token is evaluated again: its logits pick the first new token.
    context.keep_prefix(min(kept, len(prompt_tokens) - 1))
    cached = context.n_past
    context.decode(list(prompt_tokens[cached:]))
    return cached


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _sample_loop(
    context: Context,
    sampler: Sampler,
    options: SamplingOptions,
    end_ids: frozenset[int],
    result: Completion,
    cancel: threading.Event | None,
    deadline: float | None,
) -> Iterator[str]:
    model = context.model
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopStringFilter(options.stop)
    while True:
        if cancel is not None and cancel.is_set():
            result.finish_reason = "cancelled"
            break
        if deadline is not None and time.monotonic() > deadline:
            result.finish_reason = "time"
            break
        token = sampler.sample(context)
        if options.logprobs is not None and not (token in end_ids or model.is_end_of_generation(token)):
            result.logprobs.append(token_logprob(context, -1, token, options.logprobs))
        if token in end_ids or model.is_end_of_generation(token):
            result.finish_reason = "stop"
            result.end_token = token
            break
        result.tokens.append(token)
        piece = model.token_piece(token, special=token in options.preserved_tokens)
        text, hit_stop = stops.push(decoder.decode(piece))
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
