"""Phi-3.5-MoE: each token's activations count only for the experts its router chose, per expert, as
forward pre-hooks on transformers' expert block compute it (with llama.cpp's softmax top-2 routing);
experts the calibration text never reaches are reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.bundled import calibration_text_path
from phiquant.imatrix.collect import calibration_chunks
from phiquant.imatrix.files import read_imatrix
from phiquant.runtime.loader import load_model
from tests.fixtures.phimoe_specs import PHI35_MOE

CHUNK = 64
N_CHUNKS = 2
# Relative to each expert's largest column: an expert that saw one token can have columns near 1e-9
# (the squared SiLU gate of one token), where the F16 KV cache's 1e-3 noise is all there is.
EXPERT_RTOL = 2e-3


def transformers_expert_statistic(
    checkpoint: Path, chunks: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per expert tensor: (sums (n_experts, ne0), counts (n_experts,)) from the experts' inputs and routes."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.fixtures.phimoe_reference import route_with_softmax_top2, transformers_phimoe_config

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, config=transformers_phimoe_config(checkpoint), dtype=torch.float32
    ).eval()
    route_with_softmax_top2(model)
    n_experts = model.config.num_local_experts
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(name: str, expert: int, rows: torch.Tensor) -> None:
        sums, counts = stats.setdefault(
            name, (np.zeros((n_experts, rows.shape[1])), np.zeros(n_experts, dtype=np.int64))
        )
        sums[expert] += (rows.double() ** 2).sum(0).numpy()
        counts[expert] += rows.shape[0]

    def hook(layer: int):
        def record(module, args) -> None:
            hidden, chosen = args[0], args[1]
            for expert in range(n_experts):
                tokens = (chosen == expert).any(dim=-1)
                if not tokens.any():
                    continue
                x = hidden[tokens]
                gate, up = torch.nn.functional.linear(x, module.gate_up_proj[expert]).chunk(2, dim=-1)
                add(f"blk.{layer}.ffn_gate_exps.weight", expert, x)
                add(f"blk.{layer}.ffn_up_exps.weight", expert, x)
                add(f"blk.{layer}.ffn_down_exps.weight", expert, module.act_fn(gate) * up)

        return record

    for index, layer in enumerate(model.model.layers):
        layer.mlp.experts.register_forward_pre_hook(hook(index))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor(chunk[None, :].astype(np.int64)))
    return stats


@pytest.mark.slow
def test_moe_imatrix_is_per_expert_and_matches_transformers(
    shared_phimoe_checkpoint, converted_phimoe_gguf, tmp_path: Path
) -> None:
    checkpoint = shared_phimoe_checkpoint(PHI35_MOE)
    gguf = converted_phimoe_gguf(PHI35_MOE, "f32")
    result = api.imatrix(gguf, tmp_path / "imatrix.gguf", ctx=CHUNK, chunks=N_CHUNKS)
    imatrix = read_imatrix(result.path)
    with load_model(gguf) as model:
        chunks, _ = calibration_chunks(model, calibration_text_path().read_text(), CHUNK, N_CHUNKS, None)
    reference = transformers_expert_statistic(checkpoint, chunks)

    for name, (sums, counts) in reference.items():
        entry = imatrix.entries[name]
        assert entry.counts.sum() == N_CHUNKS * CHUNK * PHI35_MOE.num_experts_per_tok
        np.testing.assert_array_equal(entry.counts, counts, err_msg=name)
        ours = entry.in_sum2.reshape(counts.size, -1).astype(np.float64)
        routed = counts > 0
        relative = np.abs(ours[routed] - sums[routed]).max(axis=1) / sums[routed].max(axis=1)
        assert relative.max() < EXPERT_RTOL, (name, relative.max())
        assert (ours[~routed] == 0).all()
    never = {
        name: [int(e) for e in np.flatnonzero(counts == 0)]
        for name, (_, counts) in reference.items()
        if (counts == 0).any()
    }
    assert result.unrouted_experts == never


def test_moe_with_unrouted_experts_quantizes_to_iq2_xxs_and_says_so(
    converted_phimoe_gguf, tmp_path: Path
) -> None:
    """One short chunk leaves experts unrouted; IQ2_XXS (which needs an imatrix) still quantizes them,
    with uniform importance, and the run warns which."""
    from phiquant.progress import RecordingReporter
    from tests.oracles import llama_cpp_logits

    gguf = converted_phimoe_gguf(PHI35_MOE, "f32")
    collected = api.imatrix(gguf, tmp_path / "imatrix.gguf", ctx=32, chunks=1)
    assert collected.unrouted_experts, "the fixture should leave some experts unrouted with 32 tokens"
    reporter = RecordingReporter()
    result = api.quantize(gguf, "IQ2_XXS", tmp_path / "out", imatrix=collected.path, reporter=reporter)
    (warning,) = [w for w in reporter.messages("warn") if "no data for" in w]
    assert str(sum(map(len, collected.unrouted_experts.values()))) in warning
    logits = llama_cpp_logits(result.files[0].path, list(range(1, 17)), 32)
    assert np.isfinite(logits).all()
