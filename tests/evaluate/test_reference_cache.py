"""The reference cache: hidden states, rebuilt by ggml into llama.cpp's own logits, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant import api
from phiquant.evaluate.evaluation import tokenize_text
from phiquant.evaluate.files import content_hash, describe
from phiquant.evaluate.options import EvalOptions
from phiquant.evaluate.output_layer import OutputLayer
from phiquant.evaluate.reference import (
    ReferenceKey,
    ReferenceSource,
    cache_file,
    from_storage,
    to_storage,
    tokens_hash,
)
from phiquant.evaluate.windows import plan_windows
from phiquant.ggml import kernels as ggml
from phiquant.progress import SILENT
from phiquant.runtime.llama import LoadedModel, LoadOptions

OPTIONS = EvalOptions(ctx=256, max_windows=3, speed_runs=0)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache of this test's own, whatever other tests cached for the same reference and text."""
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("file_type", ["F32", "F16", "BF16", "Q8_0", "Q2_K"])
def test_output_layer_rebuilds_llama_cpp_logits_bit_for_bit(
    file_type, sharp_checkpoint, sharp_gguf, ladder
) -> None:
    """Whatever the output weight's type (F32, F16, BF16, Q8_0, Q6_K in Q2_K files), ggml's product of the
    stored hidden states equals the logits llama.cpp returned for the same positions."""
    path = ladder.get(file_type) or sharp_gguf(file_type.lower())
    file = describe(path)
    tokens = np.random.default_rng(0).integers(3, 32000, size=(2, 256)).astype(np.int32)
    with (
        LoadedModel(path, LoadOptions(use_extra_bufts=False)) as model,
        model.new_context(512, n_batch=512, n_seq_max=2, embeddings=True) as context,
    ):
        out = context.decode_windows(tokens, 128)
        hidden, logits = (
            out.hidden.reshape(-1, model.n_embd_out),
            out.logits.reshape(-1, model.n_vocab).copy(),
        )
    from phiquant.evaluate.reference import output_weight_type

    stored = to_storage(hidden, output_weight_type(file))
    with OutputLayer(file.gguf) as layer:
        assert np.array_equal(layer.logits(from_storage(stored)), logits)


def test_hidden_states_are_stored_rounded_as_ggml_rounds_them() -> None:
    """F16 and BF16 storage equal ggml's own fp32 -> fp16/bf16 conversion (ggml_quantize_chunk's F16/BF16
    rows), including values that round up, halfway cases and subnormals."""
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.standard_normal(4096) * 10,
            rng.standard_normal(256) * 1e-6,
            np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504.0, -0.0], dtype=np.float64),
        ]
    ).astype(np.float32)
    values = values[: len(values) // 256 * 256].reshape(-1, 256)
    f16 = ggml.quantize_chunk(1, values).view(np.uint16)
    bf16 = ggml.quantize_chunk(30, values).view(np.uint16)
    assert np.array_equal(to_storage(values, 1).view(np.uint16).ravel(), f16.ravel())
    assert np.array_equal(to_storage(values, 30).ravel(), bf16.ravel())
    assert np.array_equal(from_storage(to_storage(values, 0)), values)


@pytest.mark.slow
def test_second_evaluation_reads_the_cache_and_scores_identically(ladder, eval_text, fresh_cache) -> None:
    files = [ladder["F16"], ladder["Q4_K_M"]]
    first = api.evaluate(files, text=eval_text, options=OPTIONS)
    second = api.evaluate(files, text=eval_text, options=OPTIONS)
    assert not first.reference_from_cache and second.reference_from_cache
    assert first.reference_cache == second.reference_cache and second.reference_cache.is_file()
    assert [f.divergence for f in first.files] == [f.divergence for f in second.files]
    assert [f.perplexity for f in first.files] == [f.perplexity for f in second.files]
    # A prefix of the cached windows is served from the same file.
    fewer = api.evaluate(files, text=eval_text, options=EvalOptions(ctx=256, max_windows=2, speed_runs=0))
    assert fewer.reference_from_cache


@pytest.mark.slow
def test_cache_key_follows_model_text_and_context(ladder, eval_text) -> None:
    reference = describe(ladder["F16"])
    tokens, _, _ = tokenize_text(reference, eval_text.read_text(encoding="utf-8"))
    key = ReferenceKey("model", tokens_hash(tokens), 256)
    assert key.digest != ReferenceKey("other model", tokens_hash(tokens), 256).digest
    assert key.digest != ReferenceKey("model", tokens_hash(tokens[1:]), 256).digest
    assert key.digest != ReferenceKey("model", tokens_hash(tokens), 512).digest


def _hidden(reference, plan, windows):
    with ReferenceSource(reference, plan, None, SILENT) as source:
        return source.hidden(np.asarray(windows)), source.from_cache, source.store.computed


@pytest.mark.slow
def test_a_damaged_cache_is_rebuilt(ladder, eval_text, fresh_cache) -> None:
    reference = describe(ladder["F16"])
    tokens, adds_bos, bos = tokenize_text(reference, eval_text.read_text(encoding="utf-8"))
    plan = plan_windows(tokens, 128, adds_bos=adds_bos, bos_id=bos, max_windows=2)
    made, from_cache, _ = _hidden(reference, plan, [0, 1])
    assert not from_cache
    path = cache_file(ReferenceKey(content_hash(reference.gguf), tokens_hash(tokens), 128))
    assert path.is_file()
    path.with_suffix(".json").write_text("not json")
    again, from_cache, _ = _hidden(reference, plan, [0, 1])
    assert not from_cache and np.array_equal(again, made)
    with open(path, "r+b") as f:
        f.truncate(100)  # a cut-off states file: its windows cannot be trusted
    again, from_cache, _ = _hidden(reference, plan, [0, 1])
    assert not from_cache and np.array_equal(again, made)
    assert _hidden(reference, plan, [0, 1])[1]


@pytest.mark.slow
def test_windows_are_cached_one_by_one_and_served_in_any_order(ladder, eval_text, fresh_cache) -> None:
    """A sequential run visits some windows in a random order: another run (another seed) computes only
    the windows the cache lacks, and each window's states are the same whichever batch made them."""
    reference = describe(ladder["F16"])
    tokens, adds_bos, bos = tokenize_text(reference, eval_text.read_text(encoding="utf-8"))
    plan = plan_windows(tokens, 256, adds_bos=adds_bos, bos_id=bos)
    first, _, computed = _hidden(reference, plan, [5, 2])
    assert computed == 2
    second, from_cache, computed = _hidden(reference, plan, [2, 7, 5])
    assert computed == 1 and not from_cache  # only window 7 was new
    rows = plan.scored_per_window
    assert np.array_equal(second[:rows], first[rows:]) and np.array_equal(second[2 * rows :], first[:rows])
    together, _, _ = _hidden(reference, plan, [7])
    assert np.array_equal(together, second[rows : 2 * rows])


@pytest.mark.slow
def test_cache_is_far_smaller_than_the_logits_it_stands_for(ladder, eval_text) -> None:
    evaluation = api.evaluate([ladder["F16"]], text=eval_text, options=OPTIONS)
    logits_bytes = evaluation.n_scored_tokens * evaluation.n_vocab * 4
    on_disk = evaluation.reference_cache.stat().st_blocks * 512  # sparse: windows never computed take none
    assert on_disk * 50 < logits_bytes
