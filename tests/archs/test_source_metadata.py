"""The source's identity in the GGUF: the keys llama.cpp's converter writes from the model card's front
matter (license, base models, datasets, tags, languages) and, for a Hugging Face id, the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest

from phiquant import api
from phiquant.gguf_io import read_gguf
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.hub_cache import COMMIT, add_to_hub_cache
from tests.fixtures.model_cards import (
    ALL_CARDS,
    COMMUNITY_FINETUNE_CARD,
    PHI4_REASONING_CARD,
    with_model_card,
)
from tests.fixtures.phi3_specs import PHI35_MINI

# What the card decides.  general.name, size_label, basename, finetune, version and organization are
# also written by llama.cpp's converter, from config.json's _name_or_path and the folder's name; phiquant
# keeps its own general.name and size_label and does not guess the others from a folder name.
CARD_KEY_PREFIXES = (
    "general.license",
    "general.base_model.",
    "general.dataset.",
    "general.tags",
    "general.languages",
    "general.source.",
    "general.author",
    "general.description",
)


def _card_keys(items: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in items.items() if key.startswith(CARD_KEY_PREFIXES)}


def _our_keys(path: Path) -> dict[str, Any]:
    return _card_keys({m.key: m.value for m in read_gguf(path).metadata})


def _converter_loader_keys(checkpoint: Path) -> dict[str, Any]:
    """What convert_hf_to_gguf.py's prepare_metadata writes: gguf.Metadata.load over the folder, then
    set_gguf_meta_model (total_params only shapes size labels, which are not compared)."""
    metadata = gguf.Metadata.load(None, checkpoint, None, 0)
    metadata.name = metadata.name or checkpoint.name
    writer = gguf.GGUFWriter(None, "phi3")
    metadata.set_gguf_meta_model(writer)
    return _card_keys({key: value.value for key, value in writer.kv_data[0].items()})


@pytest.mark.parametrize("card", list(ALL_CARDS), ids=list(ALL_CARDS))
def test_card_keys_equal_those_of_llama_cpp_metadata_loader(
    card: str, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = with_model_card(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model", ALL_CARDS[card])
    ours = _our_keys(api.convert(checkpoint, tmp_path / "m.gguf", "f16").path)
    expected = _converter_loader_keys(checkpoint)
    assert "general.license" in expected and "general.tags" in expected  # the cards are not empty
    assert ours == expected


def test_finetune_records_its_phi_base_model(
    shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = with_model_card(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model", PHI4_REASONING_CARD)
    gguf_file = read_gguf(api.convert(checkpoint, tmp_path / "m.gguf", "f16").path)
    assert gguf_file.get("general.base_model.count") == 1
    assert gguf_file.get("general.base_model.0.repo_url") == "https://huggingface.co/microsoft/phi-4"
    assert gguf_file.get("general.license") == "mit"
    keys = [m.key for m in gguf_file.metadata]
    # After phiquant's own general.* keys and before the architecture's, as llama.cpp orders them.
    assert (
        keys.index("general.size_label") < keys.index("general.license") < keys.index("phi3.context_length")
    )


def _vendored_converter() -> Path | None:
    from benchmarks.llama_tools import LLAMA_CPP_PYTHON, cache_root

    candidates = [os.environ.get("PHIQUANT_LLAMA_CPP_SOURCE", "")]
    candidates.append(
        str(cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}")
        + "/vendor/llama.cpp"
    )
    for candidate in candidates:
        script = Path(candidate) / "convert_hf_to_gguf.py"
        if candidate and script.is_file():
            return script
    return None


@pytest.mark.slow
def test_card_keys_equal_what_the_vendored_converter_writes(
    shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    """The oracle itself: llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python source release the
    benchmarks download, or PHIQUANT_LLAMA_CPP_SOURCE) run on the same folder."""
    script = _vendored_converter()
    if script is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py not found (set PHIQUANT_LLAMA_CPP_SOURCE)")
    checkpoint = with_model_card(
        shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model", COMMUNITY_FINETUNE_CARD
    )
    reference = tmp_path / "llama.cpp.gguf"
    completed = subprocess.run(
        [sys.executable, str(script), str(checkpoint), "--outtype", "f16", "--outfile", str(reference)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    reader = gguf.GGUFReader(reference)
    theirs = _card_keys({key: field.contents() for key, field in reader.fields.items()})
    ours = _our_keys(api.convert(checkpoint, tmp_path / "m.gguf", "f16").path)
    assert theirs["general.base_model.0.repo_url"] == "https://huggingface.co/microsoft/Phi-3.5-mini-instruct"
    assert ours == theirs


@pytest.mark.usefixtures("no_network")
def test_hub_id_records_the_repository_and_commit(
    hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = with_model_card(
        shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model", COMMUNITY_FINETUNE_CARD
    )
    add_to_hub_cache(hub_cache, "acme/tiny-phi-med", checkpoint)
    gguf_file = read_gguf(api.convert("acme/tiny-phi-med", tmp_path / "m.gguf", "f16").path)
    assert gguf_file.get("general.source.huggingface.repository") == "acme/tiny-phi-med"
    assert gguf_file.get("general.source.url") == f"https://huggingface.co/acme/tiny-phi-med/tree/{COMMIT}"
    assert gguf_file.get("general.license") == "apache-2.0"


def test_folder_without_a_card_gets_no_source_keys(
    shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    path = api.convert(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "m.gguf", "f16").path
    assert _our_keys(path) == {}
