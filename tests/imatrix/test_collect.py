"""The importance matrix phiquant collects from llama.cpp's evaluation equals the same statistic computed
independently: forward pre-hooks on the transformers model over the same token windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.bundled import calibration_text_path
from phiquant.imatrix.collect import calibration_chunks
from phiquant.imatrix.files import read_imatrix
from phiquant.runtime.loader import load_model
from tests.fixtures.phi3_specs import PHI35_MINI

CHUNK = 128
N_CHUNKS = 4
# Every column of every matrix, relative to the column's own value.  llama.cpp's default context keeps
# the KV cache in F16, which moves the attention output (attn_output's input) and everything after it by
# about 1e-3; the first layer's attn_qkv input, before any attention, agrees to 1e-6.
COLUMN_RTOL = 5e-3
# HF module suffix -> GGUF tensor kind (archs/phi3.py maps the weights the same way).
HF_TO_GGUF = {
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def transformers_statistic(checkpoint: Path, chunks: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Per GGUF weight name: (sum over tokens of x^2 per input column, tokens), from forward pre-hooks."""
    import torch

    from tests.fixtures.transformers_reference import load_transformers_model

    model = load_transformers_model(checkpoint)
    sums: dict[str, list] = {}

    def hook(name: str):
        def record(module, inputs) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            entry = sums.setdefault(name, [np.zeros(x.shape[1]), 0])
            entry[0] += (x * x).sum(0).numpy()
            entry[1] += x.shape[0]

        return record

    for module_name, module in model.named_modules():
        for suffix, kind in HF_TO_GGUF.items():
            if module_name.endswith(suffix):
                layer = module_name.split(".")[2]
                module.register_forward_pre_hook(hook(f"blk.{layer}.{kind}.weight"))
    model.lm_head.register_forward_pre_hook(hook("output.weight"))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor(chunk[None, :].astype(np.int64)))
    return {name: (entry[0], entry[1]) for name, entry in sums.items()}


@pytest.mark.slow
def test_imatrix_matches_transformers_forward_hooks_tensor_by_tensor(
    shared_phi3_checkpoint, converted_gguf, tmp_path: Path
) -> None:
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    gguf = converted_gguf(PHI35_MINI, "f32")
    result = api.imatrix(gguf, tmp_path / "imatrix.gguf", ctx=CHUNK, chunks=N_CHUNKS)
    imatrix = read_imatrix(result.path)
    with load_model(gguf) as model:
        chunks, _ = calibration_chunks(model, calibration_text_path().read_text(), CHUNK, N_CHUNKS, None)
    reference = transformers_statistic(checkpoint, chunks)

    assert sorted(imatrix.entries) == sorted(reference)
    assert (result.chunks, imatrix.chunk_count, imatrix.chunk_size) == (N_CHUNKS, N_CHUNKS, CHUNK)
    assert imatrix.datasets == ("phiquant:bundled/texts/calibration.txt",)
    worst = {}
    for name, entry in imatrix.entries.items():
        sums, tokens = reference[name]
        assert entry.counts.tolist() == [tokens] == [N_CHUNKS * CHUNK]
        ours = entry.in_sum2.astype(np.float64) / tokens
        theirs = sums / tokens
        worst[name] = float(np.max(np.abs(ours / theirs - 1)))
    assert max(worst.values()) < COLUMN_RTOL, worst
    assert worst["blk.0.attn_qkv.weight"] < 1e-5


def test_imatrix_of_a_checkpoint_directory_equals_that_of_its_gguf(
    shared_phi3_checkpoint, converted_gguf, tmp_path: Path
) -> None:
    """A Hugging Face directory is evaluated through its own-precision conversion (BF16 here)."""
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    from_directory = api.imatrix(checkpoint, tmp_path / "a.gguf", ctx=64, chunks=2)
    from_gguf = api.imatrix(converted_gguf(PHI35_MINI, "bf16"), tmp_path / "b.gguf", ctx=64, chunks=2)
    a, b = read_imatrix(from_directory.path), read_imatrix(from_gguf.path)
    for name in a.entries:
        np.testing.assert_array_equal(a.entries[name].in_sum2, b.entries[name].in_sum2)
