"""The batch engine against the oracle of each request generated alone in its own context.

Greedy decoding on the bundled (trained) model: batched decoding moves logits by about 1e-4
(relative) when a token is evaluated beside others instead of alone, which changes a greedy choice
only at a near-tie; the tests compare whole token lists, so such a tie would show as a failure.
Requests join at chosen steps (a sink callback submits the next job when the previous one has
produced text), never after a sleep, so a CPU hog beside the tests changes nothing but the time.
"""

from __future__ import annotations

import re
import resource

import pytest

from phiquant.gguf_io import read_gguf
from phiquant.runtime.batch_engine import EngineJob, lane_sizes
from phiquant.runtime.generate import SamplingOptions
from phiquant.runtime.llama import LoadedModel, LoadOptions
from phiquant.runtime.prompt import PromptTokenizer
from tests.runtime.batch_engine_support import RecordingSink, bundled_gguf, isolated, new_engine, run_jobs

TOPICS = ["lists", "tuples", "dicts", "sets", "strings", "bytes", "files", "classes"]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    path = bundled_gguf(tmp_path_factory.mktemp("batch-engine"))
    with LoadedModel(path, LoadOptions(use_extra_bufts=False)) as model:
        yield model, PromptTokenizer(model, read_gguf(path))


def no_end(prompt: PromptTokenizer, max_tokens: int) -> SamplingOptions:
    """Greedy, end tokens banned: the answer runs to exactly max_tokens."""
    bias = tuple((token, -100.0) for token in sorted(prompt.end_ids | {2}))
    return SamplingOptions(temperature=0, max_tokens=max_tokens, logit_bias=bias)


def question(prompt: PromptTokenizer, index: int, repeat: int = 1) -> list[int]:
    text = f"Question {index}: what should I know about Python {TOPICS[index % 8]}? " * repeat
    return prompt.chat_tokens([{"role": "user", "content": text}])


def test_eight_requests_joining_at_different_steps_match_each_alone(bundled) -> None:
    model, prompt = bundled
    # Prompts of 20 to 190 tokens, read in chunks of at most 64 tokens a step beside running streams.
    prompts = [question(prompt, i, repeat=1 + (i * 5) % 13) for i in range(8)]
    options = [SamplingOptions(temperature=0, max_tokens=12 + 3 * i) for i in range(8)]
    engine = new_engine(model, prompt.end_ids, 8, n_batch=64)
    try:
        sinks = [RecordingSink() for _ in prompts]

        def join_next(index: int):
            def on_text(n_pieces: int) -> None:
                if n_pieces == 2 and index + 1 < len(prompts):  # the next request joins mid-stream
                    engine.submit(EngineJob(prompts[index + 1], options[index + 1], sinks[index + 1]))

            return on_text

        for index, sink in enumerate(sinks):
            sink.on_text = join_next(index)
        engine.submit(EngineJob(prompts[0], options[0], sinks[0]))
        batched = [sink.wait() for sink in sinks]
        stats = engine.state().stats
    finally:
        engine.close()
    assert max(len(p) for p in prompts) > 2 * 64 and min(len(p) for p in prompts) < 64
    for tokens, option, completion in zip(prompts, options, batched):
        alone = isolated(model, tokens, option, prompt.end_ids, 512)
        assert completion.tokens == alone.tokens and completion.finish_reason == alone.finish_reason
        assert completion.text == alone.text
    # Prompt chunks went through the same decodes as running streams' tokens: no stall.
    assert stats.mixed_steps >= 4, stats


def test_32_concurrent_streams_each_get_only_their_own_tokens(bundled) -> None:
    model, prompt = bundled
    prompts = [question(prompt, i) for i in range(32)]
    options = [no_end(prompt, 8 + i) for i in range(32)]  # every answer has its own length
    engine = new_engine(model, prompt.end_ids, 8)
    try:
        batched = run_jobs(engine, prompts, options)
    finally:
        engine.close()
    answers = [isolated(model, t, o, prompt.end_ids, 512) for t, o in zip(prompts, options)]
    assert len({a.text for a in answers}) == 32
    for index, (completion, alone) in enumerate(zip(batched, answers)):
        assert completion.tokens == alone.tokens, index
        assert completion.text == alone.text, index


def test_cancelled_requests_free_their_sequence_at_once(bundled) -> None:
    model, prompt = bundled
    engine = new_engine(model, prompt.end_ids, 4)
    try:
        sinks = [RecordingSink() for _ in range(4)]
        jobs = [EngineJob(question(prompt, i), no_end(prompt, 400), sink) for i, sink in enumerate(sinks)]
        for job, sink in zip(jobs, sinks):
            sink.on_text = lambda n, job=job: job.cancel.set() if n == 3 else None
            engine.submit(job)
        completions = [sink.wait() for sink in sinks]
        state = engine.state()
        assert all(c.finish_reason == "cancelled" and c.completion_tokens < 400 for c in completions)
        assert not any(s.busy for s in state.sequences) and state.waiting == 0
        # What the engine believes each sequence holds is what llama.cpp's cache holds.
        assert [s.cached_tokens for s in state.sequences] == [s.held_tokens for s in state.sequences]
        after = run_jobs(engine, [question(prompt, 9)], [no_end(prompt, 5)])[0]
        assert after.completion_tokens == 5
    finally:
        engine.close()


def test_memory_stays_flat_over_rounds(bundled) -> None:
    model, prompt = bundled
    engine = new_engine(model, prompt.end_ids, 4)
    prompts = [question(prompt, i, repeat=1 + i % 3) for i in range(12)]
    options = [no_end(prompt, 10 + i) for i in range(12)]
    resident = []
    try:
        for _ in range(4):
            run_jobs(engine, prompts, options)
            resident.append(_resident_bytes())
        state = engine.state()
    finally:
        engine.close()
    assert all(s.held_tokens <= 512 for s in state.sequences)
    # A leaked sampler chain, batch or completion per request would add far more than this.
    assert resident[3] - resident[1] < 4 * 2**20, resident


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_the_next_turn_of_a_conversation_evaluates_only_its_new_tokens(bundled) -> None:
    model, prompt = bundled
    engine = new_engine(model, prompt.end_ids, 4)
    options = SamplingOptions(temperature=0, max_tokens=20)
    try:
        run_jobs(engine, [question(prompt, 5)], [options])  # an unrelated conversation in another sequence
        messages = [{"role": "user", "content": "What is a Python list?"}]
        first = run_jobs(engine, [prompt.chat_tokens(messages)], [options])[0]
        messages += [
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "And a tuple?"},
        ]
        second_prompt = prompt.chat_tokens(messages)
        before = engine.state().stats.prompt_tokens
        second = run_jobs(engine, [second_prompt], [options])[0]
        evaluated = engine.state().stats.prompt_tokens - before
    finally:
        engine.close()
    first_prompt = prompt.chat_tokens(messages[:1])
    assert second.cached_tokens >= len(first_prompt)  # the first turn's prompt, and its answer's tokens
    assert evaluated == len(second_prompt) - second.cached_tokens
    assert second.tokens == isolated(model, second_prompt, options, prompt.end_ids, 512).tokens


def test_n_choices_share_the_prompt_through_copied_sequences(bundled) -> None:
    model, prompt = bundled
    tokens = question(prompt, 3, repeat=4)
    options = SamplingOptions(temperature=0, max_tokens=16)
    engine = new_engine(model, prompt.end_ids, 4)
    try:
        sink = RecordingSink()
        before = engine.state().stats.prompt_tokens
        engine.submit(EngineJob(tokens, options, sink, n=3))
        sink.wait()
        state = engine.state()
    finally:
        engine.close()
    assert state.stats.prompt_tokens - before == len(tokens)  # read once, for three choices
    alone = isolated(model, tokens, options, prompt.end_ids, 512)
    assert sorted(sink.completions) == [0, 1, 2]
    for completion in sink.completions.values():
        assert completion.tokens == alone.tokens
    held = [s.held_tokens for s in state.sequences if s.cached_tokens]
    assert held == [len(tokens) + len(alone.tokens) - 1] * 3


def test_lane_sizes_split_longrope_contexts_at_the_original_length() -> None:
    assert lane_sizes(4096, None) == (4096, None)
    assert lane_sizes(4096, 4096) == (4096, None)
    assert lane_sizes(131072, 4096) == (4096, 131072)
    assert lane_sizes(1000, 512) == (512, 1000)


def test_short_requests_get_short_rope_factors_and_long_ones_long_factors(bundled) -> None:
    """llama.cpp takes the long factors when a sequence's context (n_ctx_seq) exceeds the original
    one (llama-model.cpp get_rope_factors); the oracle is a context of each size."""
    model, prompt = bundled
    original = 512  # the bundled model's original_max_position_embeddings
    short_size, long_size = lane_sizes(1024, original)
    tokens = question(prompt, 2, repeat=6)
    short_options = SamplingOptions(temperature=0, max_tokens=original - len(tokens))
    long_options = SamplingOptions(temperature=0, max_tokens=original - len(tokens) + 1)
    engine = new_engine(model, prompt.end_ids, 2, sequence_tokens=short_size, long_sequence_tokens=long_size)
    try:
        assert engine.lane_of(len(tokens), short_options.max_tokens) == "short"
        assert engine.lane_of(len(tokens), long_options.max_tokens) == "long"
        short, long = run_jobs(engine, [tokens, tokens], [short_options, long_options])
        assert engine.short.context.n_ctx_seq == original
        assert engine.long is not None and engine.long.context.n_ctx_seq > original
    finally:
        engine.close()
    with_short = isolated(model, tokens, short_options, prompt.end_ids, original)
    with_long = isolated(model, tokens, long_options, prompt.end_ids, 1024)
    assert with_short.tokens[:24] != with_long.tokens[:24], (
        "the two factor sets must give different text here"
    )
    assert short.tokens == with_short.tokens
    assert long.tokens == with_long.tokens


def test_jobs_beyond_the_sequences_run_after_running_ones_that_end_together(bundled) -> None:
    """Two waves of the same length: the first wave ends in one step, leaving the engine idle with
    the second wave still waiting (as long requests wait for the long lane's one sequence)."""
    model, prompt = bundled
    prompts = [question(prompt, i) for i in range(4)]
    engine = new_engine(model, prompt.end_ids, 2)
    try:
        completions = run_jobs(engine, prompts, [no_end(prompt, 6)] * 4)
    finally:
        engine.close()
    assert [c.completion_tokens for c in completions] == [6] * 4


# Digits, then a space and lower-case letters: a shape the bundled model would not write unasked.
DIGITS_THEN_WORD = 'root ::= [0-9] [0-9] [0-9] " " [a-z] [a-z] [a-z] [a-z]'
# Batched decoding moves a logit by about 1e-4 relative (see the module docstring); log-probabilities
# of the same token then differ by at most a few times that.
BATCHED_LOGPROB_TOLERANCE = 2e-3


def test_each_sequence_keeps_its_own_grammar_and_logprobs(bundled) -> None:
    """Four requests side by side, two constrained by a grammar and all asking for logprobs: each
    equals the same request alone (tokens, text, log-probabilities and their top lists), and the
    constrained ones match the grammar while the free ones do not."""
    model, prompt = bundled
    prompts = [question(prompt, i) for i in range(4)]
    options = [
        SamplingOptions(
            temperature=0, max_tokens=12, logprobs=3, grammar=DIGITS_THEN_WORD if i % 2 == 0 else None
        )
        for i in range(4)
    ]
    engine = new_engine(model, prompt.end_ids, 4)
    try:
        batched = run_jobs(engine, prompts, options)
    finally:
        engine.close()
    for index, (tokens, option, completion) in enumerate(zip(prompts, options, batched)):
        alone = isolated(model, tokens, option, prompt.end_ids, 512)
        assert completion.tokens == alone.tokens and completion.text == alone.text
        assert len(completion.logprobs) == len(completion.tokens)
        for ours, theirs in zip(completion.logprobs, alone.logprobs):
            assert ours.token == theirs.token
            assert ours.logprob == pytest.approx(theirs.logprob, abs=BATCHED_LOGPROB_TOLERANCE)
            assert [t for t, _ in ours.top] == [t for t, _ in theirs.top]
        constrained = re.fullmatch(r"[0-9]{3} [a-z]{4}", completion.text) is not None
        assert constrained == (index % 2 == 0), completion.text
