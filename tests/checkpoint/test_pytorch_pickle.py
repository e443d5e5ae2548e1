"""Pickle-only checkpoints: refused by default, read with torch's weights-only loader under
--allow-pickle, never executing code, and converted to the very GGUF the safetensors weights give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phiquant import api
from phiquant.checkpoint.directory import open_checkpoint
from phiquant.checkpoint.pytorch_pickle import read_pickle_weights
from phiquant.errors import PhiquantError
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi3_specs import PHI3_MINI_4K, PHI35_MINI
from tests.fixtures.pickle_checkpoints import (
    PICKLE_INDEX_NAME,
    PICKLE_SINGLE_NAME,
    resave_as_pickles,
    write_payload_pickle,
)


def payload_runs_when_unpickled(path: Path, marker: Path, *, zip_format: bool) -> bool:
    """Load the file the unsafe way in a child process: proves the payload is live."""
    load = (
        f"import torch; torch.load({str(path)!r}, weights_only=False)"
        if zip_format
        else f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    )
    subprocess.run([sys.executable, "-c", load], capture_output=True, timeout=120, check=False)
    return marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "raw-pickle"])
def test_code_payload_is_refused_by_default_and_with_allow_pickle_and_never_runs(
    phi3_mini_4k_checkpoint, tmp_path, zip_format
) -> None:
    proof_marker = tmp_path / "proof-it-runs"
    proof = write_payload_pickle(tmp_path / "proof.bin", proof_marker, zip_format=zip_format)
    assert payload_runs_when_unpickled(proof, proof_marker, zip_format=zip_format)

    checkpoint = resave_as_pickles(phi3_mini_4k_checkpoint, tmp_path / "evil")
    for weights in checkpoint.glob("*.bin"):
        weights.unlink()
    (checkpoint / PICKLE_INDEX_NAME).unlink(missing_ok=True)
    marker = tmp_path / "pwned"
    write_payload_pickle(checkpoint / PICKLE_SINGLE_NAME, marker, zip_format=zip_format)
    out = tmp_path / "out"
    out.mkdir()

    refused = run_phiquant("convert", checkpoint, "-o", out / "m.gguf")
    assert_one_line_error(refused, "pickle", "--allow-pickle", str(checkpoint))
    allowed = run_phiquant("convert", checkpoint, "-o", out / "m.gguf", "--allow-pickle")
    expected = "posix.system" if zip_format else "not a PyTorch zip checkpoint"
    assert_one_line_error(allowed, expected, PICKLE_SINGLE_NAME)
    quantized = run_phiquant("quantize", checkpoint, "-t", "Q4_K_M", "-o", out, "--allow-pickle")
    assert_one_line_error(quantized, expected)
    assert not marker.exists()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("spec", [PHI3_MINI_4K, PHI35_MINI], ids=["single-file", "sharded"])
def test_pickle_checkpoint_converts_to_the_same_gguf_as_its_safetensors(
    make_phi3_checkpoint, tmp_path, spec
) -> None:
    safetensors = make_phi3_checkpoint(spec, shards=1 if spec is PHI3_MINI_4K else 2)
    pickles = resave_as_pickles(safetensors, tmp_path / "pickles")
    assert (pickles / PICKLE_INDEX_NAME).exists() == (spec is PHI35_MINI)
    expected = api.convert(safetensors, tmp_path / "from-safetensors.gguf", "auto")
    got = api.convert(pickles, tmp_path / "from-pickles.gguf", "auto", allow_pickle=True)
    assert got.outtype == expected.outtype == "bf16"
    assert got.path.read_bytes() == expected.path.read_bytes()


def test_quantize_cli_reads_pickles_like_safetensors(phi35_mini_checkpoint, tmp_path) -> None:
    pickles = resave_as_pickles(phi35_mini_checkpoint, tmp_path / "Phi-3.5-mini-instruct")
    out_pickles, out_safetensors = tmp_path / "a", tmp_path / "b"
    result = run_phiquant("quantize", pickles, "-t", "Q4_K_M", "-o", out_pickles, "--allow-pickle", "--json")
    assert result.returncode == 0, result.stderr
    api.quantize(phi35_mini_checkpoint, "Q4_K_M", out_safetensors)
    (from_pickles,) = out_pickles.iterdir()
    (from_safetensors,) = out_safetensors.iterdir()
    assert from_pickles.read_bytes() == from_safetensors.read_bytes()


def test_missing_torch_is_a_clear_error(phi3_mini_4k_checkpoint, tmp_path, monkeypatch) -> None:
    pickles = resave_as_pickles(phi3_mini_4k_checkpoint, tmp_path / "p")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(PhiquantError, match=r"torch is not installed: pip install 'phiquant\[pickle\]'"):
        open_checkpoint(pickles, allow_pickle=True)


def test_torch_with_the_weights_only_bypass_is_refused(tmp_path, monkeypatch) -> None:
    path = tmp_path / PICKLE_SINGLE_NAME
    torch.save({"w": torch.zeros(2, 2)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(PhiquantError, match="CVE-2025-32434"):
        read_pickle_weights(path)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"w": torch.zeros(1).expand(1 << 20)}, "storage holds 4"),  # stride 0: 4 bytes posing as 4 MiB
        ({"w": torch.zeros(4, dtype=torch.int64)}, "dtype torch.int64"),
        ({"w": 5}, "is a int, not a tensor"),
        ({"model": {"w": torch.zeros(2)}}, "flat state dicts"),
        ([torch.zeros(2)], "not a state dict"),
        ({3: torch.zeros(2)}, "not a tensor name"),
    ],
    ids=["stride-0", "int64", "not-a-tensor", "nested", "list", "int-key"],
)
def test_pickles_that_are_not_plain_weights_are_refused(tmp_path, state, message) -> None:
    path = tmp_path / PICKLE_SINGLE_NAME
    torch.save(state, path)
    with pytest.raises(PhiquantError, match=message) as error:
        read_pickle_weights(path)
    assert str(path) in str(error.value)


def test_training_state_pickles_are_not_taken_for_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["Phi3ForCausalLM"]}')
    torch.save({"lr": torch.zeros(1)}, tmp_path / "optimizer.pt")
    with pytest.raises(PhiquantError, match="no pytorch_model.bin"):
        open_checkpoint(tmp_path, allow_pickle=True)


def test_pickle_rows_read_back_exactly(tmp_path) -> None:
    values = torch.randn(6, 8).to(torch.bfloat16)
    path = tmp_path / PICKLE_SINGLE_NAME
    torch.save({"w": values, "t": values.float().t()}, path)  # "t" is a transposed (non-contiguous) view
    entries = {e.name: e for e in read_pickle_weights(path)}
    assert entries["w"].dtype == "BF16" and entries["w"].shape == (6, 8) and entries["w"].nbytes == 96
    assert (entries["w"].read(2, 5) == values[2:5].float().numpy()).all()
    assert (entries["t"].read() == values.float().t().numpy()).all()
