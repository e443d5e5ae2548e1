"""`phiquant generate` as a user runs it, including the seed's check of the quantized Phi prompt."""

from __future__ import annotations

import dataclasses
import json

import pytest

from phiquant.ggml import devices
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.phi3_specs import PHI3_MINI_4K, PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_tokenizer

SEED_PROMPT = "<|user|>\nCan you introduce .NET<|end|>\n<|assistant|>\n"
SPECIAL_TEXTS = ("<|end|>", "<|assistant|>", "<|endoftext|>", "<|user|>")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))


def generate_json(model, *args: str) -> dict:
    result = run_phiquant("generate", model, "--threads", "1", "--json", *args, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_seed_check_runs_the_phi35_prompt_with_10_gpu_layers(converted_gguf, shared_phi3_checkpoint) -> None:
    """The seed's last step: the Phi-3.5 prompt, quantized model, --gpu-layers 10."""
    from phiquant import api

    f16 = converted_gguf(PHI35_MINI, "f16")
    q4 = api.quantize(f16, "Q4_K_M", f16.parent / "q4").files[0].path
    result = run_phiquant(
        "generate",
        q4,
        "-p",
        SEED_PROMPT,
        "--gpu-layers",
        "10",
        "--max-tokens",
        "16",
        "--seed",
        "1",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and not any(s in result.stdout for s in SPECIAL_TEXTS)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("[length] ") and "16 generated" in summary
    # The prompt's ids are the Hugging Face tokenizer's (special tokens recognised in the text).
    hf_ids = load_transformers_tokenizer(shared_phi3_checkpoint(PHI35_MINI)).encode(SEED_PROMPT)
    assert f"{len(hf_ids)} prompt tokens" in summary
    if not devices.supports_gpu_offload():
        assert (
            "warning: --gpu-layers 10: all 4 layers on the CPU (this llama.cpp build has no GPU support)"
            in result.stderr
        )
        assert f"all {PHI35_MINI.num_hidden_layers} layers on the CPU" in summary


def test_json_result_and_the_chat_flag_agree_with_the_raw_prompt(converted_gguf) -> None:
    model = converted_gguf(PHI35_MINI, "f16")
    raw = generate_json(model, "-p", SEED_PROMPT, "--seed", "3", "--max-tokens", "12")
    chat = generate_json(model, "-p", "Can you introduce .NET", "--chat", "--seed", "3", "--max-tokens", "12")
    assert chat["text"] == raw["text"] and chat["prompt_tokens"] == raw["prompt_tokens"]
    assert raw["seed"] == 3 and raw["completion_tokens"] == 12 and raw["finish_reason"] == "length"
    assert raw["context"] == PHI35_MINI.original_max_position_embeddings  # LongRoPE: original context
    assert raw["gpu_layers"] == 0 or devices.supports_gpu_offload()


def test_model_may_be_a_hugging_face_directory(converted_gguf, shared_phi3_checkpoint) -> None:
    from_directory = generate_json(
        shared_phi3_checkpoint(PHI35_MINI), "-p", SEED_PROMPT, "--seed", "2", "--max-tokens", "8"
    )
    from_gguf = generate_json(
        converted_gguf(PHI35_MINI, "bf16"), "-p", SEED_PROMPT, "--seed", "2", "--max-tokens", "8"
    )
    assert from_directory["text"] == from_gguf["text"]


def test_prompt_from_a_file_and_plain_output(converted_gguf, tmp_path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(SEED_PROMPT, encoding="utf-8")
    model = converted_gguf(PHI35_MINI, "f16")
    expected = generate_json(model, "-p", SEED_PROMPT, "--seed", "4", "--max-tokens", "6")["text"]
    result = run_phiquant(
        "generate", model, "-f", prompt, "--seed", "4", "--max-tokens", "6", "--threads", "1", "-q"
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == expected + ("" if expected.endswith("\n") else "\n")


def test_bad_input_is_one_line(converted_gguf, tmp_path) -> None:
    model = converted_gguf(PHI35_MINI, "f16")
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    cases = [
        ((tmp_path / "missing.gguf", "-p", "x"), "no such file"),
        ((not_gguf, "-p", "x"), "not a GGUF file"),
        ((model, "-p", "x", "--ctx", "100000"), "larger than the 8192 tokens"),
        ((model, "-p", "x", "--gpu-layers", "lots"), "--gpu-layers takes a number"),
        ((model, "-p", "x", "--temp", "-1"), "temperature"),
        ((model, "-p", "x", "--system", "s"), "--system needs --chat"),
        ((model, "-p", "x", "--chat-template", tmp_path / "none.jinja"), "no such file"),
        ((model, "-p", "x", "--threads", "0"), "--threads"),
        ((model, "-p", "word " * 400), "the context holds 256 (a larger --ctx"),
        ((model, "-p", "x", "--chat-template", "{{ ().__class__.__base__.__subclasses__() }}"), "unsafe"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_phiquant("generate", *args), fragment)


def test_a_kv_cache_too_big_for_memory_is_refused_with_its_size(make_phi3_checkpoint, tmp_path) -> None:
    """A plain (non-LongRoPE) model trained for 2^27 tokens: its default context would need
    2 layers x 4 KV heads x (64 + 64) dims x 2 bytes = 2 KiB per token, 256 GiB in all."""
    huge_context = dataclasses.replace(
        PHI3_MINI_4K, max_position_embeddings=2**27, original_max_position_embeddings=2**27
    )
    from phiquant import api

    gguf = api.convert(make_phi3_checkpoint(huge_context), tmp_path / "huge.gguf", "f16").path
    result = run_phiquant("generate", gguf, "-p", "hello")
    assert_one_line_error(result, "needs 256.0 GiB", "KV cache", "--ctx")
    assert generate_json(gguf, "-p", "hello", "--ctx", "512", "--max-tokens", "2")["completion_tokens"] == 2
