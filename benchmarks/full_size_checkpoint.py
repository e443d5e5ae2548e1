"""A full-size Phi-3.5-mini-shaped checkpoint with random BF16 weights, for benchmarks.

3.8B parameters (hidden 3072, 32 layers, 32 heads, intermediate 8192, vocab 32064), written as two
safetensors shards plus an index, like the real repository, with the fixture factory's tokenizer
files.  Weights are random bit patterns with exponents of weight-like magnitude (0.008 to 0.06):
generating them is far cheaper than sampling a normal distribution and just as good for timing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import numpy as np
from tests.fixtures.hf_json_files import write_hf_json
from tests.fixtures.phi3_config_files import config_json, generation_config_json
from tests.fixtures.phi3_rope_factors import phi35_long_factors, phi35_short_factors
from tests.fixtures.phi3_specs import PHI35_MINI, LongRopeScaling
from tests.fixtures.phi3_tensors import phi3_tensor_specs
from tests.fixtures.phi3_tokenizer_files import write_phi3_tokenizer_files
from tests.fixtures.sentencepiece_vocab import phi3_sentencepiece_vocab

PHI35_MINI_FULL = dataclasses.replace(
    PHI35_MINI,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=131072,
    original_max_position_embeddings=4096,
    rope_scaling=LongRopeScaling("longrope", phi35_long_factors(48), phi35_short_factors(48)),
)

CHUNK_ELEMENTS = 1 << 24


def random_bf16_bits(rng: np.random.Generator, count: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 16, size=count, dtype=np.uint16)
    # keep sign and mantissa, force the exponent into 120..123
    return (bits & np.uint16(0x81FF)) | np.uint16(0x3C00)


def write_shard(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator
) -> dict[str, str]:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in tensors:
            remaining = math.prod(shape)
            ones = "norm" in name
            while remaining:
                count = min(remaining, CHUNK_ELEMENTS)
                data = np.full(count, 0x3F80, dtype=np.uint16) if ones else random_bf16_bits(rng, count)
                f.write(data.tobytes())
                remaining -= count
    return {name: path.name for name, _ in tensors}


def build_full_size_checkpoint(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = PHI35_MINI_FULL
    write_hf_json(directory / "config.json", config_json(spec))
    write_hf_json(directory / "generation_config.json", generation_config_json(spec), sort_keys=True)
    write_phi3_tokenizer_files(directory, spec.tokenizer, phi3_sentencepiece_vocab())
    tensors = [(t.name, tuple(t.shape)) for t in phi3_tensor_specs(spec)]
    half = len(tensors) // 2
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    for index, part in enumerate((tensors[:half], tensors[half:]), start=1):
        weight_map |= write_shard(directory / f"model-{index:05d}-of-00002.safetensors", part, rng)
    total = sum(2 * math.prod(shape) for _, shape in tensors)
    write_hf_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    return directory
