"""What the model card reports, measured on the exported BF16 files as transformers loads them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Perplexity:
    window: int
    windows: int
    loss: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def heldout_windows(token_ids: list[int], window: int, count: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `window` tokens; `count` of them spread evenly, or all."""
    available = len(token_ids) // window
    chosen = range(available) if count is None else [index * available // count for index in range(count)]
    return torch.tensor([token_ids[index * window : (index + 1) * window] for index in chosen])


def perplexity(model: PreTrainedModel, token_ids: list[int], window: int) -> Perplexity:
    """Mean loss over every full non-overlapping window (each window's first token is not predicted)."""
    windows = heldout_windows(token_ids, window)
    total = 0.0
    with torch.no_grad():
        for row in windows:
            total += model(input_ids=row[None], labels=row[None]).loss.float().item()
    return Perplexity(window=window, windows=len(windows), loss=total / len(windows))


def greedy_chat_answer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, question: str, max_new_tokens: int = 96
) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=False)
