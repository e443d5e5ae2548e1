"""Memory decisions made from GGUF metadata, checked against what llama.cpp really allocates."""

from __future__ import annotations

import re

import pytest

from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.runtime import memory
from phiquant.runtime.llama import LoadedModel, LoadOptions, capture_llama_log
from phiquant.runtime.memory import ModelShape
from tests.fixtures.phi3_specs import PHI3_MEDIUM_4K, PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_model
from tests.oracles import llama_cpp_logits, normalised_mse, transformers_logits

# Phi-3-mini-128k-instruct's config.json (docs/phi_model_files.md §3.1, as §1.1) in GGUF keys.
PHI3_MINI_128K_METADATA = {
    "general.architecture": "phi3",
    "phi3.block_count": 32,
    "phi3.embedding_length": 3072,
    "phi3.attention.head_count": 32,
    "phi3.attention.head_count_kv": 32,
    "phi3.context_length": 131072,
    "phi3.rope.scaling.original_context_length": 4096,
}
KV_BUFFER_LINE = re.compile(r"CPU KV buffer size =\s+([0-9.]+) MiB")


@pytest.mark.parametrize("spec", [PHI35_MINI, PHI3_MEDIUM_4K], ids=["mha", "gqa"])
@pytest.mark.parametrize("n_ctx", [100, 256, 300, 512])
def test_kv_cache_estimate_equals_the_buffer_llama_cpp_allocates(spec, n_ctx, converted_gguf) -> None:
    gguf = converted_gguf(spec, "f16")
    shape = ModelShape.from_gguf(read_gguf(gguf))
    with (
        LoadedModel(gguf, LoadOptions(use_extra_bufts=False)) as model,
        capture_llama_log() as log,
        model.new_context(n_ctx),
    ):
        pass
    (allocated,) = [float(m.group(1)) for line in log if (m := KV_BUFFER_LINE.search(line))]
    assert f"{memory.kv_cache_bytes(shape, n_ctx) / 2**20:.2f}" == f"{allocated:.2f}"


def test_phi3_mini_at_128k_needs_48_gib_and_is_refused_with_the_number() -> None:
    # gpustack/gpustack#33: Phi-3-mini has no GQA, so 128k tokens of F16 KV cache take about 48 GiB.
    shape = ModelShape.from_metadata(PHI3_MINI_128K_METADATA.get, ["rope_factors_long.weight"])
    assert memory.kv_cache_bytes(shape, 131072) == 48 * 2**30
    with pytest.raises(PhiquantError) as error:
        memory.check_kv_cache_fits(shape, 131072, available=16 * 2**30)
    message = str(error.value)
    assert "needs 48.0 GiB" in message and "16.0 GiB" in message
    suggested = int(re.search(r"--ctx (\d+) or less", message).group(1))
    memory.check_kv_cache_fits(shape, suggested, available=16 * 2**30)  # the advice is true...
    with pytest.raises(PhiquantError):  # ...and tight
        memory.check_kv_cache_fits(shape, suggested + memory.CONTEXT_PADDING, available=16 * 2**30)


def test_server_slots_multiply_the_kv_cache() -> None:
    shape = ModelShape.from_metadata(PHI3_MINI_128K_METADATA.get)
    one = memory.kv_cache_bytes(shape, 4096)
    memory.check_kv_cache_fits(shape, 4096, n_contexts=4, available=4 * one)
    with pytest.raises(PhiquantError, match="4 contexts of 4096 tokens"):
        memory.check_kv_cache_fits(shape, 4096, n_contexts=4, available=4 * one - 1)


def test_longrope_models_default_to_their_original_context_and_warn_above_it() -> None:
    shape = ModelShape.from_metadata(PHI3_MINI_128K_METADATA.get, ["rope_factors_long.weight"])
    assert memory.default_context_size(shape) == 4096
    assert memory.context_warnings(shape, 4096) == []
    assert "long-context RoPE factors" in memory.context_warnings(shape, 4097)[0]
    # Without factor tensors the same keys describe a plain model: its training context is the default.
    assert memory.default_context_size(ModelShape.from_metadata(PHI3_MINI_128K_METADATA.get)) == 131072


def test_context_above_the_training_context_is_refused() -> None:
    shape = ModelShape.from_metadata(PHI3_MINI_128K_METADATA.get)
    with pytest.raises(PhiquantError, match="larger than the 131072 tokens"):
        memory.check_context_size(shape, 131073)


def test_default_context_keeps_short_prompts_on_the_short_rope_factors(
    converted_gguf, shared_phi3_checkpoint
) -> None:
    """The trap of ggml-org/llama.cpp#8995: the default context must give short prompts the logits
    transformers gives them; a larger context switches llama.cpp to the long factors."""
    gguf = converted_gguf(PHI35_MINI, "f32")
    default = memory.default_context_size(ModelShape.from_gguf(read_gguf(gguf)))
    tokens = [(i * 7919) % 32000 + 1 for i in range(48)]
    expected = transformers_logits(load_transformers_model(shared_phi3_checkpoint(PHI35_MINI)), tokens)
    assert normalised_mse(llama_cpp_logits(gguf, tokens, default), expected) < 1e-4
    assert normalised_mse(llama_cpp_logits(gguf, tokens, 4 * default), expected) > 1e-2


def test_gpu_layers_fill_from_the_output_layer_down_within_the_budget() -> None:
    weights, output, kv = [100] * 4, 50, [10] * 4
    # llama.cpp offloads the output layer first, then blocks from the last one down.
    assert memory.gpu_layer_cost(weights, output, kv, 1) == 50
    assert memory.gpu_layer_cost(weights, output, kv, 3) == 50 + 2 * 110
    assert memory.gpu_layer_cost(weights, output, kv, 9) == 50 + 4 * 110
    assert memory.plan_gpu_layers(weights, output, kv, free_bytes=1000, reserve_bytes=0) == 5
    assert memory.plan_gpu_layers(weights, output, kv, free_bytes=50 + 2 * 110 + 109, reserve_bytes=0) == 3
    assert memory.plan_gpu_layers(weights, output, kv, free_bytes=1000, reserve_bytes=990) == 0


def test_layer_weight_bytes_add_up_to_the_file_tensors(converted_gguf) -> None:
    gguf = read_gguf(converted_gguf(PHI35_MINI, "f16"))
    per_layer, output = memory.layer_weight_bytes(gguf, PHI35_MINI.num_hidden_layers)
    assert len(set(per_layer)) == 1 and per_layer[0] > 0
    token_embd = gguf.tensor("token_embd.weight").nbytes
    rope = sum(t.nbytes for t in gguf.tensors if t.name.startswith("rope_factors"))
    assert sum(per_layer) + output + token_embd + rope == sum(t.nbytes for t in gguf.tensors)
