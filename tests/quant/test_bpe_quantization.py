"""Q4_K_M and Q8_0 files of the BPE families: the bytes llama.cpp's own llama_model_quantize makes from our
F32 file (so llama.cpp's per-tensor rules handle phi2's split, biased attention and Phi-4-mini's tied
embedding as they do in llama.cpp), and they load and compute close to the F32 file.

phi-2's shrunk hidden size (320) is not a multiple of 256, so k-quants do not fit its rows and llama.cpp
falls back to other types; phiquant does the same only when fallbacks are allowed, and says which.  The
real phi-2 (2560) and the phi-1_5 fixture (256) need none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.quant.types import PRESETS
from tests.fixtures.phi2_specs import PHI2, PHI_1_5
from tests.fixtures.phi4_specs import PHI4, PHI4_MINI
from tests.oracles import llama_cpp_logits, normalised_mse
from tests.quant.llama_reference import ReferenceJob, run_reference_jobs

LADDER = ("Q4_K_M", "Q8_0")
FTYPES = {p.name: int(p.ftype) for p in PRESETS if p.name in LADDER}
CASES = [
    pytest.param(PHI_1_5, False, id="phi15"),
    pytest.param(PHI2, True, id="phi2-with-fallbacks"),
    pytest.param(PHI4, False, id="phi4"),
    pytest.param(PHI4_MINI, False, id="phi4-mini"),
]
# NMSE of the quantized files' logits against the F32 file's.  Random Gaussian weights quantize worse than
# trained ones: measured Q8_0 3e-4 (phi-2, phi-1_5) to 1.1e-3 (Phi-4-mini), Q4_K_M 1.1e-2 to 7.3e-2
# (phi-4).  Against the same file's own weights dequantized to F32 the Q4_K_M file is within about 1e-3
# (only llama.cpp's quantization of the activations differs): the gap to F32 is the weights' rounding.
BOUNDS = {"Q8_0": 3e-3, "Q4_K_M": 0.15}
OWN_WEIGHTS_BOUND = 5e-3


@pytest.fixture(scope="module")
def quantized(shared_bpe_checkpoint, module_folders):
    made = {}

    def get(spec, allow_fallback):
        if spec not in made:
            directory = module_folders.mktemp("quantized")
            result = api.quantize(
                shared_bpe_checkpoint(spec), list(LADDER), directory, allow_fallback=allow_fallback
            )
            made[spec] = {f.type: f for f in result.files}
        return made[spec]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "allow_fallback"), CASES)
def test_files_equal_llama_cpps_quantization_of_our_f32(
    spec, allow_fallback, converted_bpe_gguf, quantized, tmp_path
) -> None:
    f32 = converted_bpe_gguf(spec, "f32")
    jobs = [ReferenceJob(str(f32), str(tmp_path / f"llama-{name}.gguf"), FTYPES[name]) for name in LADDER]
    results = run_reference_jobs(jobs)
    assert all(r.succeeded for r in results), [r.log[-1500:] for r in results if not r.succeeded]
    ours = quantized(spec, allow_fallback)
    for name, result in zip(LADDER, results):
        assert ours[name].path.read_bytes() == Path(result.job.output_path).read_bytes(), name
    assert bool(ours["Q4_K_M"].fallbacks) == allow_fallback


def test_phi2_k_quants_need_fallbacks_allowed(shared_bpe_checkpoint, tmp_path) -> None:
    with pytest.raises(PhiquantError, match=r"not a multiple of .*--allow-fallback"):
        api.quantize(shared_bpe_checkpoint(PHI2), "Q4_K_M", tmp_path, dry_run=True)


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "allow_fallback"), CASES)
def test_quantized_files_load_and_stay_close_to_f32(
    spec, allow_fallback, converted_bpe_gguf, quantized
) -> None:
    tokens = np.random.default_rng(1).integers(0, 50000, size=64).tolist()
    reference = llama_cpp_logits(converted_bpe_gguf(spec, "f32"), tokens, 256)
    for name in LADDER:
        logits = llama_cpp_logits(quantized(spec, allow_fallback)[name].path, tokens, 256)
        assert np.isfinite(logits).all()
        error = normalised_mse(logits, reference)
        print(f"{spec.name_or_path} {name}: NMSE {error:.3g} vs F32")
        assert error < BOUNDS[name], name


@pytest.mark.slow
@pytest.mark.parametrize("spec", [PHI_1_5, PHI4_MINI], ids=["phi15", "phi4-mini"])
def test_quantized_files_compute_what_their_own_weights_say(spec, quantized, tmp_path) -> None:
    """The quantized file, run by llama.cpp, against its own weights dequantized to an F32 file."""
    tokens = np.random.default_rng(1).integers(0, 50000, size=64).tolist()
    for name in LADDER:
        path = quantized(spec, False)[name].path
        (dequantized,) = api.quantize(path, "F32", tmp_path / name, allow_requantize=True).files
        error = normalised_mse(
            llama_cpp_logits(path, tokens, 256), llama_cpp_logits(dequantized.path, tokens, 256)
        )
        assert error < OWN_WEIGHTS_BOUND, name
