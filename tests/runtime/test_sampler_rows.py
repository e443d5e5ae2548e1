"""The Sampler reads any row of a decode's logits (as a batched engine samples one row per sequence), and
token_logprob reports log_softmax of that same row, computed here with numpy from llama.cpp's logits."""

from __future__ import annotations

import numpy as np
import pytest

from phiquant.runtime.generate import Sampler, SamplingOptions, token_logprob
from phiquant.runtime.llama import LoadedModel
from tests.fixtures.phi3_specs import PHI35_MINI

PROMPT_TEXT = "The capital of France is Paris, and the capital of Italy"


@pytest.fixture(scope="module")
def decoded(converted_gguf):
    with LoadedModel(converted_gguf(PHI35_MINI, "f16")) as model, model.new_context(128) as context:
        tokens = model.tokenize(PROMPT_TEXT)
        logits = context.decode(tokens, all_logits=True)
        yield model, context, logits


def test_greedy_sampling_of_each_row_is_that_rows_best_token(decoded) -> None:
    model, context, logits = decoded
    for row in range(len(logits)):
        sampler = Sampler(SamplingOptions(temperature=0), model.n_vocab, 0, model=model)
        assert sampler.sample(context, row) == int(np.argmax(logits[row]))
        sampler.close()


def test_logprobs_of_a_row_are_its_log_softmax(decoded) -> None:
    model, context, logits = decoded
    for row in (0, len(logits) // 2, len(logits) - 1):
        expected = logits[row].astype(np.float64)
        expected -= np.logaddexp.reduce(expected)
        chosen = int(np.argsort(expected)[-7])  # any token, not only the best
        reported = token_logprob(context, row, chosen, 5)
        assert reported.token == chosen and reported.logprob == pytest.approx(expected[chosen], abs=1e-9)
        best = np.argsort(-expected, kind="stable")[:5]
        assert [t for t, _ in reported.top] == best.tolist()
        assert [lp for _, lp in reported.top] == pytest.approx(expected[best].tolist(), abs=1e-9)
