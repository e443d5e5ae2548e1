"""Comparisons against independent implementations (transformers, sentencepiece, llama.cpp)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from phiquant.runtime.llama import LoadedModel, LoadOptions


def normalised_mse(values: np.ndarray, reference: np.ndarray) -> float:
    return float(((values - reference) ** 2).mean() / (reference**2).mean())


def top1_agreement(values: np.ndarray, reference: np.ndarray) -> float:
    return float((values.argmax(-1) == reference.argmax(-1)).mean())


def top1_flips_are_near_ties(values: np.ndarray, reference: np.ndarray, factor: float = 10.0) -> bool:
    """Every position whose top token differs from the reference's is a near tie in the reference:
    the reference scores the two tokens closer than `factor` times the RMS logit error."""
    rms_error = float(np.sqrt(((values - reference) ** 2).mean()))
    for position in np.nonzero(values.argmax(-1) != reference.argmax(-1))[0]:
        ours, theirs = values[position].argmax(), reference[position].argmax()
        if reference[position, theirs] - reference[position, ours] > factor * rms_error:
            return False
    return True


def mean_kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(reference || other), computed directly in float64."""
    ref = reference_logits.astype(np.float64)
    other = logits.astype(np.float64)
    ref_logp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    other_logp = other - np.logaddexp.reduce(other, axis=-1, keepdims=True)
    return float((np.exp(ref_logp) * (ref_logp - other_logp)).sum(-1).mean())


def llama_cpp_logits(gguf: Path, tokens: Sequence[int], n_ctx: int) -> np.ndarray:
    """Logits at every position from llama.cpp, in reference precision (F32 cache, no flash attention).

    n_ctx matters for LongRoPE: llama.cpp uses the long factors when n_ctx exceeds the original context."""
    with (
        LoadedModel(gguf, LoadOptions(use_extra_bufts=False)) as model,
        model.new_context(n_ctx, reference_precision=True) as context,
    ):
        return context.decode(list(tokens), all_logits=True)


def transformers_logits(model: torch.nn.Module, tokens: Sequence[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([list(tokens)])).logits[0].float().numpy()
