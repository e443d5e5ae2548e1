"""Quantizing the Phi-3.5-MoE fixture gives, byte for byte, the files llama.cpp's own
`llama_model_quantize` makes from our F32 GGUF -- the expert tensors included.

What this exercises on the MoE side (src/llama-quant.cpp, mirrored in phiquant.quant): 3-D expert tensors
quantized expert by expert, with each expert's slice of the importance matrix; the layer index of an
expert tensor parsed from its name (n_expert > 1) for the ffn_down/use_more_bits rules; the n_expert >= 4
branches of the low-bit presets; and the router (ffn_gate_inp) never quantized.  The fixture has 16
experts, as the real model, and 8 layers so the layer-position rules all fire.  The quantized files load
and run in llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.imatrix.files import ImatrixEntry, ImportanceMatrix, write_imatrix
from phiquant.quant.quantize import imatrix_kv_overrides
from phiquant.quant.types import parse_preset
from tests.fixtures.phimoe_reference import load_gguf_weights, load_phimoe_model
from tests.fixtures.phimoe_specs import PHI35_MOE
from tests.oracles import llama_cpp_logits, normalised_mse, transformers_logits
from tests.quant.llama_reference import KV_INT, KV_STR, ReferenceJob, run_reference_jobs

NAME = "Phi-3.5-MoE-instruct"
WITHOUT_IMATRIX = ["Q4_K_M", "Q8_0", "Q2_K", "Q3_K_M", "Q5_K_S"]
WITH_IMATRIX = ["IQ2_XS", "Q4_K_M"]
N_LAYERS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, phi3_vocab) -> Path:
    from tests.fixtures.phimoe_checkpoints import build_phimoe_checkpoint

    directory = tmp_path_factory.mktemp("q") / NAME
    # Expert rows one 256-value block long (the least every k- and i-quant accepts): 16 experts x 8 layers
    # of IQ2_XS on both sides are most of this module's time.
    return build_phimoe_checkpoint(
        directory, PHI35_MOE, num_hidden_layers=N_LAYERS, intermediate_size=256, vocab=phi3_vocab
    )


@pytest.fixture(scope="module")
def f32_gguf(checkpoint, tmp_path_factory) -> Path:
    return api.convert(checkpoint, tmp_path_factory.mktemp("f32") / f"{NAME}-F32.gguf", "f32").path


@pytest.fixture(scope="module")
def imatrix(f32_gguf, tmp_path_factory) -> tuple[Path, Path]:
    """A random importance matrix over every matrix llama.cpp's imatrix tool covers, expert tensors with
    one count per expert (one expert saw no tokens: llama.cpp then uses weights of 1)."""
    rng = np.random.default_rng(7)
    entries = {}
    for tensor in read_gguf(f32_gguf).tensors:
        if len(tensor.shape) < 2 or not tensor.name.startswith("blk.") or "ffn_gate_inp" in tensor.name:
            continue
        n_matrices = tensor.shape[2] if len(tensor.shape) > 2 else 1
        counts = rng.integers(1, 40, n_matrices)
        if n_matrices > 1:
            counts[3] = 0
        sums = rng.uniform(0.01, 4.0, tensor.shape[0] * n_matrices).astype(np.float32) * np.repeat(
            counts, tensor.shape[0]
        )
        entries[tensor.name] = ImatrixEntry(sums.astype(np.float32), counts)
    directory = tmp_path_factory.mktemp("imatrix")
    path = directory / "imatrix.gguf"
    write_imatrix(path, ImportanceMatrix(entries, ("calibration.txt",), 10, 512))
    npz = directory / "imatrix.npz"
    np.savez(npz, **{name: entry.weights(False) for name, entry in entries.items()})
    return path, npz


def reference_files(f32_gguf: Path, out: Path, presets: list[str], imatrix) -> dict[str, Path]:
    out.mkdir(exist_ok=True)
    kv: tuple = ()
    if imatrix is not None:
        n_entries = len(np.load(imatrix[1]).files)
        overrides = imatrix_kv_overrides(str(imatrix[0]), ["calibration.txt"], n_entries, chunks_count=10)
        kv = tuple((o.key, KV_STR if o.gguf_type == "str" else KV_INT, o.value) for o in overrides)
    jobs = [
        ReferenceJob(
            str(f32_gguf),
            str(out / f"{NAME}-{preset}.gguf"),
            int(parse_preset(preset).ftype),
            imatrix_path=None if imatrix is None else str(imatrix[1]),
            kv_overrides=kv,
        )
        for preset in presets
    ]
    results = run_reference_jobs(jobs)
    refused = [preset for preset, result in zip(presets, results) if not result.succeeded]
    assert refused == [], f"llama.cpp refused {refused}"
    return {preset: Path(job.output_path) for preset, job in zip(presets, jobs)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("presets", "with_imatrix"),
    [(WITHOUT_IMATRIX, False), (WITH_IMATRIX, True)],
    ids=["no-imatrix", "imatrix"],
)
def test_phimoe_presets_equal_llama_cpp_byte_for_byte(
    checkpoint, f32_gguf, imatrix, tmp_path, presets, with_imatrix
) -> None:
    reference = reference_files(f32_gguf, tmp_path / "llama", presets, imatrix if with_imatrix else None)
    ours = api.quantize(checkpoint, presets, tmp_path / "ours", imatrix=imatrix[0] if with_imatrix else None)
    assert [f.type for f in ours.files] == presets
    different = [f.type for f in ours.files if f.path.read_bytes() != reference[f.type].read_bytes()]
    assert different == []


@pytest.mark.slow
def test_quantizing_our_f32_gguf_gives_the_same_files_as_the_checkpoint(
    checkpoint, f32_gguf, imatrix, tmp_path
) -> None:
    """The GGUF source path reads 3-D expert tensors back expert by expert, with the same imatrix slices."""
    ladder = ["Q4_K_M", "Q8_0", "Q2_K"]
    from_checkpoint = api.quantize(checkpoint, ladder, tmp_path / "a", imatrix=imatrix[0])
    from_gguf = api.quantize(f32_gguf, ladder, tmp_path / "b", imatrix=imatrix[0])
    for a, b in zip(from_checkpoint.files, from_gguf.files):
        assert a.path.name == b.path.name and a.path.read_bytes() == b.path.read_bytes(), a.type


@pytest.mark.slow
def test_expert_tensors_take_the_preset_types_and_the_router_stays_f32(checkpoint, tmp_path) -> None:
    """Q4_K_M on PhiMoE, as llama.cpp plans it: experts Q4_K, ffn_down_exps Q6_K in the layers
    use_more_bits picks (layer index read from the tensor name), the router F32."""
    (planned,) = api.quantize(checkpoint, "Q4_K_M", tmp_path, dry_run=True).plans.values()
    types = {plan.name: plan.target_type.name for plan in planned}
    assert {types[f"blk.{i}.ffn_gate_inp.weight"] for i in range(N_LAYERS)} == {"F32"}
    assert {types[f"blk.{i}.ffn_gate_exps.weight"] for i in range(N_LAYERS)} == {"Q4_K"}
    down = [types[f"blk.{i}.ffn_down_exps.weight"] for i in range(N_LAYERS)]
    # use_more_bits(i, 8): i < 1, i >= 7, or (i - 1) % 3 == 2  -> layers 0, 3, 6, 7
    assert down == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["Q4_K_M", "Q8_0"])
def test_quantized_phimoe_runs_like_its_own_weights(shared_phimoe_checkpoint, tmp_path, preset) -> None:
    """The file loads in llama.cpp and computes what its own weights compute: the oracle is transformers
    (with llama.cpp's router) holding the file's dequantized tensors.  llama.cpp also quantizes the
    activations inside its matrix products (to Q8_K / Q8_0), and on this random-weight fixture that can
    flip which two experts a token goes to; those positions differ a lot, the others little (measured
    NMSE 0.055 / 0.020, median per position 7e-3 / 5e-4 on the 4-layer fixture; flips add up with depth,
    so the 8-layer one is not used here).  A wrong layout or wrong scales give ~1."""
    checkpoint = shared_phimoe_checkpoint(PHI35_MOE)
    (quantized,) = api.quantize(checkpoint, preset, tmp_path).files
    model = load_phimoe_model(checkpoint, router="softmax")
    load_gguf_weights(model, quantized.path)
    tokens = np.random.default_rng(3).integers(3, 32000, size=64).tolist()
    reference = transformers_logits(model, tokens)
    logits = llama_cpp_logits(quantized.path, tokens, 256)
    assert np.isfinite(logits).all()
    per_position = ((logits - reference) ** 2).mean(-1) / (reference**2).mean(-1)
    assert normalised_mse(logits, reference) < 0.2
    assert float(np.median(per_position)) < 2e-2
