"""llama.cpp's own quantizer, given the importance matrix phiquant collected, writes the same file as
phiquant given it.  The weights handed to llama.cpp are read from our file with gguf-py (llama.cpp's
Python GGUF package), normalised as llama-quantize's loader does (sum / count per matrix), so neither
side's reading of the file depends on our reader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from phiquant import api
from phiquant.quant.quantize import imatrix_kv_overrides
from phiquant.quant.types import parse_preset
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.oracles import llama_cpp_logits
from tests.quant.llama_reference import KV_INT, KV_STR, ReferenceJob, run_reference_jobs

PRESETS = ("Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XXS", "IQ1_S")


def weights_read_by_gguf_py(path: Path) -> tuple[dict[str, np.ndarray], list[str], int]:
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    weights = {}
    for name in {n.rsplit(".", 1)[0] for n in tensors}:
        sums, counts = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        per_matrix = sums.reshape(counts.size, -1) / counts[:, None]
        weights[name] = per_matrix.reshape(-1).astype(np.float32)
    datasets = [
        str(bytes(reader.fields["imatrix.datasets"].parts[i]), "utf-8")
        for i in reader.fields["imatrix.datasets"].data
    ]
    return weights, datasets, int(reader.fields["imatrix.chunk_count"].contents())


@pytest.mark.slow
def test_llama_quantize_with_our_imatrix_writes_the_same_file_as_phiquant(
    converted_gguf, tmp_path: Path
) -> None:
    source = converted_gguf(PHI35_MINI, "f32")
    collected = api.imatrix(source, tmp_path / "imatrix.gguf", ctx=128, chunks=4)
    weights, datasets, chunks = weights_read_by_gguf_py(collected.path)
    assert datasets == [collected.dataset] and chunks == 4
    np.savez(tmp_path / "imatrix.npz", **weights)
    overrides = imatrix_kv_overrides(
        str(collected.path), datasets, entries_count=len(weights), chunks_count=chunks
    )
    kv = tuple((o.key, KV_STR if o.gguf_type == "str" else KV_INT, o.value) for o in overrides)
    (tmp_path / "llama").mkdir()
    jobs = [
        ReferenceJob(
            str(source),
            str(tmp_path / "llama" / f"model-{name}.gguf"),
            int(parse_preset(name).ftype),
            imatrix_path=str(tmp_path / "imatrix.npz"),
            kv_overrides=kv,
        )
        for name in PRESETS
    ]
    results = run_reference_jobs(jobs)
    assert [r.succeeded for r in results] == [True] * len(PRESETS), [r.log[-500:] for r in results]
    ours = api.quantize(source, list(PRESETS), tmp_path / "ours", imatrix=collected.path)
    for file, result in zip(ours.files, results):
        assert file.path.read_bytes() == Path(result.job.output_path).read_bytes(), file.type
    for file in ours.files:
        if file.type in ("IQ2_XXS", "IQ1_S"):  # the lowest types run, with finite, non-constant logits
            logits = llama_cpp_logits(file.path, list(range(1, 33)), 64)
            assert np.isfinite(logits).all() and logits.std() > 0, file.type
