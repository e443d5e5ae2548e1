"""Who the converted model is: the general.* keys llama.cpp's converter derives from the checkpoint's
model card (README.md front matter), plus the Hugging Face repository and commit when the checkpoint
is a snapshot of the hub cache.

The front matter is read and interpreted by gguf-py's own `Metadata` (the code convert_hf_to_gguf.py
runs), so licenses, base models, datasets, tags and languages get the same keys, values and types as
in llama.cpp's files.  phiquant keeps its own general.name and general.size_label, and takes nothing
from config.json or the folder's name here: a snapshot folder is named by a commit hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import yaml  # type: ignore[import-untyped]

from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum

MODEL_CARD = "README.md"
MAX_MODEL_CARD_BYTES = 8 << 20
HUB_URL = "https://huggingface.co"
# phiquant writes these itself (general.name by its own rule; size_label from the tensors).
OWN_KEYS = ("general.name", "general.size_label")
HF_REPOSITORY_KEY = "general.source.huggingface.repository"


@dataclass(frozen=True)
class HubSnapshot:
    """A checkpoint folder that is `<cache>/models--<org>--<name>/snapshots/<commit>`."""

    repo_id: str
    commit: str


def hub_snapshot(directory: Path) -> HubSnapshot | None:
    resolved = directory.resolve()
    repo = resolved.parent.parent
    if resolved.parent.name != "snapshots" or not repo.name.startswith("models--"):
        return None
    parts = repo.name.split("--")
    if len(parts) != 3 or not all(parts[1:]):
        return None
    return HubSnapshot(f"{parts[1]}/{parts[2]}", resolved.name)


def model_card_metadata(directory: Path, n_parameters: int) -> gguf.Metadata:
    """The card's front matter as gguf-py interprets it (base models and datasets expanded to
    name/organization/repo_url as llama.cpp writes them)."""
    card = directory / MODEL_CARD
    if card.is_file() and card.stat().st_size > MAX_MODEL_CARD_BYTES:
        raise PhiquantError(f"is larger than {MAX_MODEL_CARD_BYTES >> 20} MiB", path=card)
    try:
        front_matter = gguf.Metadata.load_model_card(directory)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PhiquantError(
            f"the model card's front matter is not valid YAML: {problem}", path=card
        ) from None
    except OSError as error:
        raise PhiquantError(f"cannot read the model card: {error.strerror}", path=card) from None
    return gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), front_matter, None, None, n_parameters)


def source_metadata(directory: Path, n_parameters: int) -> list[Metadatum]:
    """The model-card keys in the order llama.cpp writes them, then the hub repository (when known)."""
    metadata = model_card_metadata(directory, n_parameters)
    snapshot = hub_snapshot(directory)
    if snapshot is not None and metadata.source_url is None:
        metadata.source_url = f"{HUB_URL}/{snapshot.repo_id}/tree/{snapshot.commit}"
    if metadata.name is None:
        metadata.name = ""  # required by set_gguf_meta_model; dropped below (OWN_KEYS)
    try:
        keys = _as_metadata(metadata)
    except (TypeError, ValueError, AttributeError) as error:
        raise PhiquantError(
            f"the model card's front matter has a value llama.cpp cannot store: {error}",
            path=directory / MODEL_CARD,
        ) from None
    if snapshot is not None:
        keys.append(Metadatum(HF_REPOSITORY_KEY, snapshot.repo_id, gguf.GGUFValueType.STRING))
    return keys


def _as_metadata(metadata: gguf.Metadata) -> list[Metadatum]:
    writer = gguf.GGUFWriter(None, "")
    metadata.set_gguf_meta_model(writer)
    kv: dict[str, Any] = writer.kv_data[0]
    return [
        Metadatum(key, value.value, value.type, value.sub_type)
        for key, value in kv.items()
        if key not in OWN_KEYS and key != "general.architecture"
    ]
