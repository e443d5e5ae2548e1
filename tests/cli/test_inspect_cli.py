"""`phiquant inspect` describes a GGUF for people and for scripts; gguf's own reader is the oracle."""

from __future__ import annotations

import json

from gguf import GGUFReader

from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi3_specs import PHI35_MINI


def test_json_report_agrees_with_ggufs_reader(converted_gguf) -> None:
    path = converted_gguf(PHI35_MINI, "bf16")
    result = run_phiquant("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    reader = GGUFReader(path)
    assert report["n_tensors"] == len(reader.tensors)
    assert report["n_parameters"] == sum(int(t.n_elements) for t in reader.tensors)
    assert report["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert report["bits_per_weight"] == 8 * report["tensor_bytes"] / report["n_parameters"]
    by_type = {u["type"]: u["n_tensors"] for u in report["types"]}
    assert by_type == {
        "BF16": sum(t.tensor_type.name == "BF16" for t in reader.tensors),
        "F32": sum(t.tensor_type.name == "F32" for t in reader.tensors),
    }
    assert report["architecture"] == "phi3" and report["file_type"] == "BF16"
    ends = {e["id"]: e["text"] for e in report["end_of_generation"]}
    assert {32000: "<|endoftext|>", 32001: "<|assistant|>", 32007: "<|end|>"}.items() <= ends.items()
    assert report["hyperparameters"]["rope.scaling.original_context_length"] == 256


def test_human_report_names_the_essentials(converted_gguf) -> None:
    result = run_phiquant("inspect", converted_gguf(PHI35_MINI, "f32"))
    assert result.returncode == 0, result.stderr
    for fragment in ("phi3", "bits per weight", "F32", "<|end|>", "end of generation", "chat template: yes"):
        assert fragment in result.stdout


def test_inspect_of_a_non_gguf_file_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, this is not a model file")
    assert_one_line_error(run_phiquant("inspect", path), str(path), "not a GGUF file")
