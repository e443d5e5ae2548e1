"""`--text-only` from the command line: Phi-4-multimodal is refused without it (one line naming the flag,
exit 2, nothing written), converted and quantized with it; the flag is refused where it does not apply."""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGMLQuantizationType

from phiquant import api
from phiquant.gguf_io import read_gguf
from phiquant.runtime.llama import LoadedModel
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi4_specs import PHI4_MINI
from tests.fixtures.phi4mm_checkpoints import PHI4_MULTIMODAL


def test_convert_without_the_flag_is_refused_naming_it(shared_phi4mm_checkpoint, tmp_path) -> None:
    result = run_phiquant("convert", shared_phi4mm_checkpoint(PHI4_MULTIMODAL), "-o", tmp_path / "m.gguf")
    assert_one_line_error(result, "Phi4MMForCausalLM", "llama.cpp", "LoRA", "--text-only")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_quantize_without_the_flag_is_refused_in_json_mode(shared_phi4mm_checkpoint, tmp_path) -> None:
    checkpoint = shared_phi4mm_checkpoint(PHI4_MULTIMODAL)
    result = run_phiquant("quantize", checkpoint, "-t", "Q4_K_M", "-o", tmp_path / "out", "--json")
    assert_one_line_error(result, "Phi4MMForCausalLM", "--text-only")
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_the_flag_is_refused_for_a_text_model(shared_bpe_checkpoint, tmp_path) -> None:
    result = run_phiquant(
        "convert", shared_bpe_checkpoint(PHI4_MINI), "--text-only", "-o", tmp_path / "m.gguf"
    )
    assert_one_line_error(result, "--text-only", "Phi3ForCausalLM", "config.json")
    assert list(tmp_path.iterdir()) == []


def test_the_flag_is_refused_for_a_gguf_source(converted_phi4mm_gguf, tmp_path) -> None:
    gguf = converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32")
    result = run_phiquant("quantize", gguf, "--text-only", "-t", "Q4_K_M", "-o", tmp_path / "out")
    assert_one_line_error(result, "--text-only", "GGUF")
    assert not (tmp_path / "out").exists()


def test_convert_with_the_flag_reports_what_it_left_out(shared_phi4mm_checkpoint, tmp_path) -> None:
    result = run_phiquant(
        "convert",
        shared_phi4mm_checkpoint(PHI4_MULTIMODAL),
        "--text-only",
        "-o",
        tmp_path / "m.gguf",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["path"]) == tmp_path / "m.gguf"
    assert any("LoRA adapter tensors" in warning for warning in report["warnings"])
    assert read_gguf(tmp_path / "m.gguf").get("general.name") == "Phi-4-multimodal-instruct (text only)"


def test_quantize_with_the_flag_writes_q4_k_m_equal_to_quantizing_the_f32_file(
    shared_phi4mm_checkpoint, converted_phi4mm_gguf, tmp_path
) -> None:
    """From the multimodal checkpoint in one step, the same bytes as quantizing its --text-only F32 GGUF
    (whose parity with transformers test_phi4mm.py proves); llama.cpp loads and runs it."""
    checkpoint = shared_phi4mm_checkpoint(PHI4_MULTIMODAL)
    result = run_phiquant(
        "quantize", checkpoint, "--text-only", "-t", "Q4_K_M", "-o", tmp_path / "cli", "--json"
    )
    assert result.returncode == 0, result.stderr
    (file,) = json.loads(result.stdout)["files"]
    ours = read_gguf(file["path"])
    reference = read_gguf(
        api.quantize(converted_phi4mm_gguf(PHI4_MULTIMODAL, "f32"), "Q4_K_M", tmp_path / "api").files[0].path
    )
    types = {t.name: GGMLQuantizationType(t.ggml_type).name for t in ours.tensors}
    assert types["blk.0.attn_qkv.weight"] in ("Q4_K", "Q5_K", "Q6_K") and "Q4_K" in types.values()
    assert [t.name for t in ours.tensors] == [t.name for t in reference.tensors]
    for mine, theirs in zip(ours.tensors, reference.tensors, strict=True):
        assert mine.ggml_type == theirs.ggml_type
        assert bytes(ours.raw_bytes(mine)) == bytes(reference.raw_bytes(theirs)), mine.name
    with LoadedModel(file["path"]) as model, model.new_context(256) as context:
        logits = context.decode(
            model.tokenize("<|user|>Hi<|end|><|assistant|>", parse_special=True), all_logits=True
        )
    assert logits.shape[1] == PHI4_MINI.vocab_size and bool((logits == logits).all())
