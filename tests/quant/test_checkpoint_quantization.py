"""Quantizing a Hugging Face Phi-3.5 checkpoint end to end gives the files llama.cpp's own
`llama_model_quantize` makes from our F32 GGUF of the same checkpoint: byte for byte, whole file.

The fixture has 8 layers so that llama.cpp's layer-position rules (use_more_bits, first n/8 and
n/16 layers) all fire.  Every preset llama.cpp offers runs, without an importance matrix (where
llama.cpp accepts that) and with one; ours are written in one pass over the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.imatrix.files import ImatrixEntry, ImportanceMatrix, write_imatrix
from phiquant.quant.quantize import imatrix_kv_overrides
from phiquant.quant.types import PRESETS
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.quant.llama_reference import KV_INT, KV_STR, ReferenceJob, run_reference_jobs

LLAMA_PRESETS = [preset for preset in PRESETS if preset.in_llama_cpp]
NEEDS_IMATRIX = {"Q2_K_S", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS"}


def file_name(preset: str) -> str:
    return f"Phi-3.5-mini-instruct-{preset}.gguf"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tests.fixtures.phi_checkpoints import build_phi3_checkpoint

    return build_phi3_checkpoint(
        tmp_path_factory.mktemp("q") / "Phi-3.5-mini-instruct", PHI35_MINI, num_hidden_layers=8
    )


@pytest.fixture(scope="module")
def f32_gguf(checkpoint, tmp_path_factory) -> Path:
    return api.convert(
        checkpoint, tmp_path_factory.mktemp("f32") / "Phi-3.5-mini-instruct-F32.gguf", "f32"
    ).path


@pytest.fixture(scope="module")
def imatrix(f32_gguf, tmp_path_factory) -> tuple[Path, Path]:
    """A random positive importance matrix for every matrix llama.cpp's imatrix tool would cover,
    as our GGUF imatrix file and as the .npz the reference harness hands to llama.cpp."""
    rng = np.random.default_rng(7)
    gguf = read_gguf(f32_gguf)
    weights = {
        t.name: rng.uniform(0.01, 4.0, t.shape[0]).astype(np.float32)
        for t in gguf.tensors
        if len(t.shape) == 2 and t.name.startswith("blk.")
    }
    directory = tmp_path_factory.mktemp("imatrix")
    entries = {name: ImatrixEntry(w * 10, np.array([10])) for name, w in weights.items()}
    path = directory / "imatrix.gguf"
    write_imatrix(path, ImportanceMatrix(entries, ("calibration.txt",), 10, 512))
    npz = directory / "imatrix.npz"
    np.savez(npz, **{name: entry.weights(False) for name, entry in entries.items()})
    return path, npz


@pytest.fixture(scope="module")
def ours_with_imatrix(checkpoint, imatrix, tmp_path_factory) -> api.QuantizeResult:
    """Every preset with the imatrix, written once: the byte test and the dry-run test both read them."""
    names = [p.name for p in LLAMA_PRESETS]
    return api.quantize(checkpoint, names, tmp_path_factory.mktemp("ours-imatrix"), imatrix=imatrix[0])


def reference_files(
    f32_gguf: Path, out: Path, presets, imatrix: tuple[Path, Path] | None
) -> dict[str, Path | None]:
    out.mkdir(exist_ok=True)
    kv: tuple = ()
    if imatrix is not None:
        overrides = imatrix_kv_overrides(
            str(imatrix[0]), ["calibration.txt"], entries_count=8 * 4, chunks_count=10
        )
        kv = tuple((o.key, KV_STR if o.gguf_type == "str" else KV_INT, o.value) for o in overrides)
    jobs = [
        ReferenceJob(
            str(f32_gguf),
            str(out / file_name(p.name)),
            int(p.ftype),
            imatrix_path=None if imatrix is None else str(imatrix[1]),
            kv_overrides=kv,
        )
        for p in presets
    ]
    results = run_reference_jobs(jobs)
    return {p.name: (Path(r.job.output_path) if r.succeeded else None) for p, r in zip(presets, results)}


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
def test_every_preset_equals_llama_cpp_byte_for_byte(
    checkpoint, f32_gguf, imatrix, tmp_path, request, with_imatrix
) -> None:
    presets = LLAMA_PRESETS if with_imatrix else [p for p in LLAMA_PRESETS if p.name not in NEEDS_IMATRIX]
    reference = reference_files(f32_gguf, tmp_path / "llama", presets, imatrix if with_imatrix else None)
    refused = [name for name, path in reference.items() if path is None]
    assert refused == [], f"llama.cpp refused {refused}"
    if with_imatrix:
        ours = request.getfixturevalue("ours_with_imatrix")
    else:
        ours = api.quantize(checkpoint, [p.name for p in presets], tmp_path / "ours")
    assert [f.type for f in ours.files] == [p.name for p in presets]
    different = [
        f.type
        for f in ours.files
        if f.path.read_bytes() != reference[f.type].read_bytes()  # type: ignore[union-attr]
    ]
    assert different == []


@pytest.mark.slow
def test_presets_that_need_an_imatrix_are_refused_without_one_like_llama_cpp(
    checkpoint, f32_gguf, tmp_path
) -> None:
    presets = [p for p in LLAMA_PRESETS if p.name in NEEDS_IMATRIX]
    reference = reference_files(f32_gguf, tmp_path / "llama", presets, None)
    assert all(path is None for path in reference.values())
    for preset in presets:
        with pytest.raises(PhiquantError, match="importance matrix"):
            api.quantize(checkpoint, preset.name, tmp_path / "ours", dry_run=True)


@pytest.mark.slow
def test_dry_run_sizes_equal_the_written_files(checkpoint, imatrix, ours_with_imatrix, tmp_path) -> None:
    names = [p.name for p in LLAMA_PRESETS]
    predicted = api.quantize(checkpoint, names, tmp_path, imatrix=imatrix[0], dry_run=True)
    assert list(tmp_path.iterdir()) == []
    written = ours_with_imatrix
    assert [f.file_size for f in predicted.files] == [f.path.stat().st_size for f in written.files]
    assert [f.bits_per_weight for f in predicted.files] == [f.bits_per_weight for f in written.files]


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "bf16"])
def test_checkpoint_and_float_gguf_sources_give_identical_files(
    checkpoint, imatrix, ours_with_imatrix, tmp_path, outtype
) -> None:
    float_gguf = api.convert(
        checkpoint, tmp_path / f"Phi-3.5-mini-instruct-{outtype.upper()}.gguf", outtype
    ).path
    ladder = ["Q4_K_M", "Q8_0", "IQ4_XS", "Q2_K", "F16"]
    from_checkpoint = {f.type: f for f in ours_with_imatrix.files}  # the checkpoint's, with this imatrix
    from_gguf = api.quantize(float_gguf, ladder, tmp_path / "b", imatrix=imatrix[0])
    assert [f.type for f in from_gguf.files] == ladder
    for b in from_gguf.files:
        a = from_checkpoint[b.type]
        assert a.path.name == b.path.name
        assert a.path.read_bytes() == b.path.read_bytes(), a.type


@pytest.mark.slow
def test_convert_q8_0_equals_llama_cpp_q8_0_from_our_f32(checkpoint, f32_gguf, tmp_path) -> None:
    ours = api.convert(checkpoint, tmp_path / "ours.gguf", "q8_0").path
    reference = reference_files(f32_gguf, tmp_path / "llama", [p for p in PRESETS if p.name == "Q8_0"], None)
    assert ours.read_bytes() == reference["Q8_0"].read_bytes()  # type: ignore[union-attr]


@pytest.mark.slow
def test_tensor_type_overrides_match_llama_cpp_tt_overrides(checkpoint, f32_gguf, tmp_path) -> None:
    overrides = (("ffn_down", "q8_0"), (r"blk\.[0-3]\.attn_qkv", "q5_0"), ("ffn", "iq4_nl"))
    ours = api.quantize(checkpoint, "Q4_K_M", tmp_path / "ours", tensor_types=overrides)
    from phiquant.quant.types import parse_ggml_type

    job = ReferenceJob(
        str(f32_gguf),
        str(tmp_path / "llama.gguf"),
        15,
        tt_overrides=tuple((pattern, int(parse_ggml_type(t))) for pattern, t in overrides),
    )
    (result,) = run_reference_jobs([job])
    assert result.succeeded, result.log[-2000:]
    assert ours.files[0].path.read_bytes() == Path(job.output_path).read_bytes()
    types = {t.name: t.ggml_type for t in read_gguf(ours.files[0].path).tensors}
    assert (
        types["blk.0.ffn_down.weight"] == 8
        and types["blk.2.attn_qkv.weight"] == 6
        and types["blk.5.ffn_up.weight"] == 20
    )
