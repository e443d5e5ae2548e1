"""Phi4ForCausalLMV (Phi-4-reasoning-vision): the language model GGUF runs like transformers' Phi3ForCausalLM
on the trunk, and the mmproj file is what llama.cpp's converter writes.

Two oracles for the projector file.  Where llama.cpp's source is at hand (the benchmarks' cache, or
PHIQUANT_LLAMA_CPP_SOURCE), the vendored `convert_hf_to_gguf.py --mmproj` runs on the same fixture and the
files must agree key for key and byte for byte (`python benchmarks/mmproj_parity.py` fetches the source and
runs that comparison on a machine without it).  Everywhere, an independent expectation built from gguf-py's
own name and key tables and torch's casts: every kept tensor, its type and its bytes; the patch embedding
checked by what it computes (a convolution with the GGUF weight equals SigLIP2's Linear over its patches).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGUFReader, Keys

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.gguf_io.mmproj_writer import write_mmproj
from phiquant.workflows.job import open_source
from tests.fixtures.phi4v_checkpoints import PHI4_REASONING_VISION, PROJECTOR_PREFIX, VISION_PREFIX
from tests.fixtures.phi4v_reference import checkpoint_state, load_text_model, patchify
from tests.oracles import llama_cpp_logits, normalised_mse, top1_agreement, transformers_logits

SPEC = PHI4_REASONING_VISION
LLAMA_CPP_PYTHON = "0.3.36"
# Naming heuristics of the converter (from the directory name), not model data.
NAME_KEYS = ("general.name", "general.basename", "general.finetune")


def llama_cpp_source() -> Path | None:
    configured = os.environ.get("PHIQUANT_LLAMA_CPP_SOURCE")
    cache = Path(os.environ.get("PHIQUANT_BENCH_CACHE", Path.home() / ".cache" / "phiquant-bench"))
    default = (
        cache
        / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
        / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
        / "vendor"
        / "llama.cpp"
    )
    source = Path(configured) if configured else default
    return source if (source / "convert_hf_to_gguf.py").is_file() else None


def fields(path: Path) -> dict[str, object]:
    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {
        t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape), t.data.tobytes())
        for t in GGUFReader(path).tensors
    }


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f16", "f32", "bf16", "q8_0"])
def test_mmproj_equals_llama_cpp_converter_output(mmproj_type, phi4v_checkpoint, tmp_path) -> None:
    source = llama_cpp_source()
    if source is None:
        pytest.skip("llama.cpp source not found; python benchmarks/mmproj_parity.py fetches it and runs this")
    projector = open_source(phi4v_checkpoint).model.projector
    assert projector is not None
    mmproj = write_mmproj(projector, tmp_path / "ours.gguf", mmproj_type)
    reference = tmp_path / "reference.gguf"
    converter = [sys.executable, str(source / "convert_hf_to_gguf.py"), str(phi4v_checkpoint), "--mmproj"]
    subprocess.run(
        [*converter, "--outtype", mmproj_type, "--outfile", str(reference)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours, theirs = fields(mmproj), fields(reference)
    assert {k: v for k, v in ours.items() if k not in NAME_KEYS} == {
        k: v for k, v in theirs.items() if k not in NAME_KEYS
    }
    assert list(tensors(mmproj)) == list(tensors(reference))
    assert tensors(mmproj) == tensors(reference)


def expected_name(hf_name: str, exported_layers: int) -> str | None:
    """gguf-py's MMPROJ names for the SigLIP2 modules (its TENSOR_NAMES table, not phiquant's)."""
    local = hf_name.removeprefix(VISION_PREFIX)
    if hf_name.startswith(PROJECTOR_PREFIX):
        index, suffix = hf_name.removeprefix(PROJECTOR_PREFIX).split(".")
        return TENSOR_NAMES[MODEL_TENSOR.V_MMPROJ].format(bid=index) + "." + suffix
    by_module = {
        "embeddings.patch_embedding": TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_PATCH],
        "embeddings.position_embedding": TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_POS],
        "layer_norm1": TENSOR_NAMES[MODEL_TENSOR.V_ENC_INPUT_NORM],
        "layer_norm2": TENSOR_NAMES[MODEL_TENSOR.V_ENC_POST_ATTN_NORM],
        "self_attn.q_proj": TENSOR_NAMES[MODEL_TENSOR.V_ENC_ATTN_Q],
        "self_attn.k_proj": TENSOR_NAMES[MODEL_TENSOR.V_ENC_ATTN_K],
        "self_attn.v_proj": TENSOR_NAMES[MODEL_TENSOR.V_ENC_ATTN_V],
        "self_attn.out_proj": TENSOR_NAMES[MODEL_TENSOR.V_ENC_ATTN_O],
        "mlp.fc1": TENSOR_NAMES[MODEL_TENSOR.V_ENC_FFN_UP],
        "mlp.fc2": TENSOR_NAMES[MODEL_TENSOR.V_ENC_FFN_DOWN],
    }
    module, suffix = local.rsplit(".", 1)
    if module.startswith("encoder.layers."):
        _, _, layer, part = module.split(".", 3)
        if int(layer) >= exported_layers:
            return None  # hidden_states[-2]: the last layer is never run
        return by_module[part].format(bid=layer) + "." + suffix
    return by_module[module] + "." + suffix if module in by_module else None  # post_layernorm, head: unused


def test_mmproj_holds_the_second_to_last_layer_features_path(converted_phi4v) -> None:
    converted = converted_phi4v("f32", "f16")
    vision, patch = SPEC.vision, SPEC.vision.patch_size
    kv = fields(converted.mmproj)
    assert kv["general.architecture"] == "clip"
    assert kv[Keys.Clip.PROJECTOR_TYPE] == "phi4"
    assert kv[Keys.ClipVision.BLOCK_COUNT] == vision.num_hidden_layers - 1
    assert kv[Keys.ClipVision.IMAGE_SIZE] == 16 * patch  # sqrt(256 position rows) x patch size
    assert kv[Keys.ClipVision.IMAGE_MIN_PIXELS] == vision.min_num_patches * patch * patch
    assert kv[Keys.ClipVision.IMAGE_MAX_PIXELS] == vision.max_num_patches * patch * patch
    assert kv[Keys.ClipVision.PROJECTION_DIM] == SPEC.text.hidden_size
    assert kv["general.file_type"] == 1

    state = checkpoint_state(converted.checkpoint)
    written = tensors(converted.mmproj)
    expected = {}
    for name, tensor in state.items():
        gguf_name = (
            expected_name(name, vision.num_hidden_layers - 1)
            if name.startswith((VISION_PREFIX, PROJECTOR_PREFIX))
            else None
        )
        if gguf_name is not None:
            expected[gguf_name] = tensor
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        type_name, _, data = written[name]
        if name == "v.patch_embd.weight":
            tensor = tensor.view(tensor.shape[0], patch, patch, -1).permute(0, 3, 1, 2).contiguous()
        f16 = tensor.dim() >= 2 and name != "v.position_embd.weight"
        assert type_name == ("F16" if f16 else "F32"), name
        assert data == (tensor.half() if f16 else tensor).numpy().tobytes(), name


def test_patch_embedding_layout_computes_what_siglip2_computes(converted_phi4v) -> None:
    """clip.cpp convolves the image with v.patch_embd; SigLIP2 applies a Linear to (row, col, channel)
    patches: the same numbers only with the converter's permutation."""
    converted = converted_phi4v("f32", "f32")
    patch = SPEC.vision.patch_size
    reader = GGUFReader(converted.mmproj)
    weight = next(t for t in reader.tensors if t.name == "v.patch_embd.weight")
    conv_weight = torch.from_numpy(
        np.array(weight.data).reshape(tuple(reversed([int(n) for n in weight.shape])))
    )
    state = checkpoint_state(converted.checkpoint)
    linear = state[f"{VISION_PREFIX}embeddings.patch_embedding.weight"]
    image = np.random.default_rng(1).integers(0, 256, size=(2 * patch, 3 * patch, 3), dtype=np.uint8)
    pixels = torch.from_numpy((image.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
    convolved = torch.nn.functional.conv2d(pixels, conv_weight, stride=patch)[0].flatten(1).T
    linear_out = torch.from_numpy(patchify(image, patch)) @ linear.T
    assert torch.allclose(convolved, linear_out, atol=1e-5)


@pytest.mark.slow
def test_language_model_logits_match_transformers(converted_phi4v) -> None:
    converted = converted_phi4v("f32", "f16")
    model = load_text_model(converted.checkpoint, checkpoint_state(converted.checkpoint))
    tokens = np.random.default_rng(0).integers(0, SPEC.text.vocab_size, size=40).tolist()
    reference = transformers_logits(model, tokens)
    ours = llama_cpp_logits(converted.model, tokens, 1024)
    assert normalised_mse(ours, reference) < 1e-4
    assert top1_agreement(ours, reference) == 1.0
    text = fields(converted.model)
    assert text["general.architecture"] == "phi3"
    assert not any(name.startswith(("v.", "mm.")) for name in tensors(converted.model))


@pytest.mark.slow
def test_quantize_never_gives_the_vision_tower_a_text_type(phi4v_checkpoint, tmp_path) -> None:
    result = api.quantize(phi4v_checkpoint, ["Q4_0"], tmp_path, mmproj_type="q8_0")
    assert result.mmproj == tmp_path / f"{SPEC.name_or_path}-mmproj-Q8_0.gguf"
    types = {name: t[0] for name, t in tensors(result.mmproj).items()}
    assert types["mm.2.weight"] == "Q8_0" and types["v.blk.0.attn_q.weight"] == "Q8_0"
    assert types["v.patch_embd.weight"] == "F32" and types["v.position_embd.weight"] == "F32"
    assert "Q4_0" not in types.values()
    (text_file,) = result.files
    assert not any(name.startswith(("v.", "mm.")) for name in tensors(text_file.path))


def test_inspect_shows_the_model_and_its_projector(converted_phi4v) -> None:
    converted = converted_phi4v("f32", "f16")
    model = api.inspect(converted.model)
    assert model.architecture == "phi3" and model.mmproj == str(converted.mmproj)
    projector = api.inspect(converted.mmproj)
    assert projector.architecture == "clip" and projector.mmproj is None
    assert projector.hyperparameters["projector_type"] == "phi4"
    assert projector.hyperparameters["vision.block_count"] == SPEC.vision.num_hidden_layers - 1


def _linked_copy(checkpoint: Path, target: Path) -> Path:
    """Hard links: a copy without the bytes (symbolic links leaving a checkpoint are refused)."""
    target.mkdir()
    for file in checkpoint.iterdir():
        os.link(file, target / file.name)
    return target


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ("no-preprocessor", "preprocessor_config.json is missing"),
        ("one-vision-layer", "needs at least 2"),
        ("min-above-max", "is above max_num_patches"),
    ],
)
def test_projector_problems_are_one_clear_error(edit, fragment, phi4v_checkpoint, tmp_path) -> None:
    import json

    copy = _linked_copy(phi4v_checkpoint, tmp_path / "copy")
    preprocessor = json.loads((phi4v_checkpoint / "preprocessor_config.json").read_text())
    config = json.loads((phi4v_checkpoint / "config.json").read_text())
    (copy / "preprocessor_config.json").unlink()
    (copy / "config.json").unlink()
    if edit != "no-preprocessor":
        if edit == "min-above-max":
            preprocessor["min_num_patches"] = preprocessor["max_num_patches"] + 1
        (copy / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    if edit == "one-vision-layer":
        config["vision_config"]["num_hidden_layers"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(PhiquantError, match=fragment):
        api.convert(copy, tmp_path / "out.gguf", "f32")
    assert not list(tmp_path.glob("*.gguf"))
