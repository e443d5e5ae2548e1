"""A chat with the Phi-3.5-MoE fixture ends where the model ends its turn, on <|end|>, which is never
printed.

Random weights rarely say <|end|>, so the fixture is steered honestly: one entry of lm_head.bias (the
<|end|> logit) is raised just enough that, a few tokens into the reply, <|end|> becomes the greedy choice;
every earlier choice is the model's own (phimoe_reference.steer_to_end_of_turn).  The expected reply comes
from transformers, with llama.cpp's router (see tests/archs/test_phimoe_logits.py for why).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from phiquant import api
from phiquant.runtime.chat import ChatSession
from phiquant.runtime.generate import Completion, SamplingOptions
from phiquant.runtime.llama import LoadedModel
from phiquant.runtime.runner import RunnerOptions, open_runner
from tests.fixtures.phimoe_reference import steer_to_end_of_turn
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.oracles import llama_cpp_logits

END = 32007  # <|end|>
OTHER_END_IDS = frozenset({32000, 32001})  # <|endoftext|>, <|assistant|>
# Questions tried in turn until one gives the random model a greedy reply that can be steered safely
# (no near ties on the way); with seed 0 that is the first one that works, always the same.
QUESTIONS = ("Name three colours.", "Say hello.", "Hi!", "Count to five.", "Tell me a joke.")
GREEDY = SamplingOptions(temperature=0.0, max_tokens=40)
N_CTX = PHI35_MOE.original_max_position_embeddings


@pytest.fixture(scope="module")
def steered(tmp_path_factory, phi3_vocab) -> tuple[Path, list[dict[str, str]], list[int], list[int]]:
    """(checkpoint, conversation, chat prompt ids, expected reply ending in <|end|>)."""
    from tests.fixtures.phimoe_checkpoints import build_phimoe_checkpoint

    checkpoint = build_phimoe_checkpoint(
        tmp_path_factory.mktemp("chat") / PHI35_MOE.name_or_path, PHI35_MOE, vocab=phi3_vocab
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    for question in QUESTIONS:
        conversation = [{"role": "user", "content": question}]
        prompt = list(
            tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
        )
        try:
            return (
                checkpoint,
                conversation,
                prompt,
                steer_to_end_of_turn(checkpoint, prompt, END, OTHER_END_IDS),
            )
        except ValueError:
            continue
    raise AssertionError("no question gives a steerable reply")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))


def chat(
    gguf: Path, conversation: list[dict[str, str]], expected_prompt: list[int]
) -> tuple[Completion, str]:
    """One greedy turn of phiquant's chat (the runner and session behind `phiquant chat`), in its
    default context: for a LongRoPE model that is the original context, 256 tokens here, so llama.cpp
    uses the short factors as transformers does for a prompt this short."""
    with open_runner(gguf, RunnerOptions(threads=1)) as runner:
        assert runner.n_ctx == N_CTX
        assert runner.chat_tokens(conversation) == expected_prompt
        session = ChatSession(runner, GREEDY)
        text = "".join(session.reply(conversation[-1]["content"]))
        assert session.last is not None
        return session.last, text


@pytest.mark.slow
def test_chat_round_trip_stops_on_end_of_turn_and_hides_it(steered, tmp_path) -> None:
    checkpoint, conversation, prompt, expected = steered
    assert len(expected) >= 4 and expected[-1] == END
    gguf = api.convert(checkpoint, tmp_path / "chat.gguf", "f32").path
    completion, text = chat(gguf, conversation, prompt)
    assert completion.finish_reason == "stop"
    assert completion.tokens == expected[:-1]  # the reply, without the end token ...
    with LoadedModel(gguf) as model:
        assert text == model.detokenize(expected[:-1])
    assert "<|end|>" not in text
    # ... and what stopped it was <|end|>: llama.cpp's next greedy token after the reply.
    logits = llama_cpp_logits(gguf, prompt + completion.tokens, N_CTX)
    assert int(logits[-1].argmax()) == END


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_quantized_chat_runs_and_ends_its_turn(steered, tmp_path, preset) -> None:
    """Quantized files load, chat and stop on an end id within the budget or at it; the reply is text
    without any end token (quantization may change which tokens the random model says)."""
    checkpoint, conversation, prompt, _ = steered
    (quantized,) = api.quantize(checkpoint, preset, tmp_path).files
    completion, text = chat(quantized.path, conversation, prompt)
    assert completion.tokens, "the model said nothing"
    assert completion.finish_reason in ("stop", "length")
    assert not set(completion.tokens) & (OTHER_END_IDS | {END})
    assert "<|end|>" not in text and "<|endoftext|>" not in text
