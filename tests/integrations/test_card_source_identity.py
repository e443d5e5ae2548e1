"""The card's base_model comes from what the files record about their source, not from a guess."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phiquant import api
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.hub_cache import add_to_hub_cache
from tests.fixtures.model_cards import COMMUNITY_FINETUNE_CARD, PHI4_REASONING_CARD, with_model_card
from tests.fixtures.phi3_specs import PHI35_MINI


def _front_matter(text: str) -> dict[str, object]:
    loaded = yaml.safe_load(text.removeprefix("---\n").partition("\n---\n")[0])
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.usefixtures("no_network")
def test_files_converted_from_a_hub_id_link_to_that_repository(
    hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = with_model_card(
        shared_phi3_checkpoint(PHI35_MINI), tmp_path / "model", COMMUNITY_FINETUNE_CARD
    )
    add_to_hub_cache(hub_cache, "acme/tiny-phi-med", checkpoint)
    folder = tmp_path / "files"
    folder.mkdir()
    api.convert("acme/tiny-phi-med", folder / "tiny-phi-med-F16.gguf", "f16")
    card = api.model_card(folder, write=False)
    meta = _front_matter(card.text)
    assert (meta["base_model"], meta["base_model_relation"], meta["license"]) == (
        "acme/tiny-phi-med",
        "quantized",
        "apache-2.0",
    )
    assert card.warnings == []
    assert "phiquant convert acme/tiny-phi-med --outtype f16" in card.text


def test_local_finetune_links_to_the_base_its_card_names(
    shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    checkpoint = with_model_card(
        shared_phi3_checkpoint(PHI35_MINI), tmp_path / "Phi-4-reasoning", PHI4_REASONING_CARD
    )
    folder = tmp_path / "files"
    folder.mkdir()
    api.convert(checkpoint, folder / "m-F16.gguf", "f16")
    card = api.model_card(folder, write=False)
    meta = _front_matter(card.text)
    assert (meta["base_model"], meta["base_model_relation"], meta["license"]) == (
        "microsoft/phi-4",
        "finetune",
        "mit",
    )
    assert not any("inferred" in warning for warning in card.warnings)
    overridden = _front_matter(api.model_card(folder, base_model="me/phi-4-reasoning", write=False).text)
    assert (overridden["base_model"], overridden["base_model_relation"]) == (
        "me/phi-4-reasoning",
        "quantized",
    )
