"""Sources by Hugging Face model id, resolved from a local hub cache with the network disabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.hub import ModelId, cached_snapshot, hub_cache_dir, parse_model_id, resolve_source
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.hub_cache import COMMIT, add_to_hub_cache
from tests.fixtures.phi3_specs import PHI35_MINI

REPO_ID = "microsoft/Phi-3.5-mini-instruct"


@pytest.fixture
def cached_phi35(hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints) -> Path:
    return add_to_hub_cache(hub_cache, REPO_ID, shared_phi3_checkpoint(PHI35_MINI))


def test_snapshot_files_are_links_into_blobs(cached_phi35: Path) -> None:
    """The fixture really has the hub layout (so the tests below exercise the link handling)."""
    config = cached_phi35 / "config.json"
    assert config.is_symlink()
    assert config.resolve().parent.name == "blobs"
    assert (cached_phi35.parents[1] / "refs" / "main").read_text() == COMMIT


@pytest.mark.usefixtures("no_network")
def test_convert_by_model_id_equals_convert_of_the_folder(
    cached_phi35: Path, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    by_id = read_gguf(api.convert(REPO_ID, tmp_path / "by-id.gguf", "f16").path)
    by_folder = read_gguf(
        api.convert(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "by-folder.gguf", "f16").path
    )
    # The same model, plus where it came from.
    source_keys = {"general.source.huggingface.repository", "general.source.url"}
    assert [m for m in by_id.metadata if m.key not in source_keys] == by_folder.metadata
    assert by_id.get("general.source.huggingface.repository") == REPO_ID
    id_bytes, folder_bytes = by_id.path.read_bytes(), by_folder.path.read_bytes()
    assert id_bytes[by_id.data_offset :] == folder_bytes[by_folder.data_offset :]


@pytest.mark.usefixtures("no_network")
def test_quantize_by_model_id_names_files_after_the_model_not_the_commit(
    hub_cache: Path, make_phi3_checkpoint: object, tmp_path: Path
) -> None:
    checkpoint = make_phi3_checkpoint(PHI35_MINI)  # type: ignore[operator]
    config = checkpoint / "config.json"
    config.write_text(config.read_text().replace('"_name_or_path"', '"_unused_name"'))
    add_to_hub_cache(hub_cache, REPO_ID, checkpoint)
    result = api.quantize(REPO_ID, ["Q8_0"], tmp_path / "out")
    assert [f.path.name for f in result.files] == ["Phi-3.5-mini-instruct-Q8_0.gguf"]


@pytest.mark.usefixtures("no_network")
def test_cli_convert_accepts_a_model_id(cached_phi35: Path, tmp_path: Path) -> None:
    result = run_phiquant("convert", REPO_ID, "-o", tmp_path / "m.gguf", "--outtype", "f16", "--json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


def test_missing_model_id_gives_the_download_command(hub_cache: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_phiquant("convert", REPO_ID, cwd=workdir)
    assert_one_line_error(result, REPO_ID, f"`huggingface-cli download {REPO_ID}`", str(hub_cache))
    assert list(workdir.iterdir()) == []


@pytest.mark.usefixtures("no_network")
def test_missing_revision_gives_the_download_command_with_revision(cached_phi35: Path) -> None:
    with pytest.raises(PhiquantError) as error:
        resolve_source(f"{REPO_ID}@v2")
    assert f"huggingface-cli download {REPO_ID} --revision v2" in str(error.value)
    assert "revision 'v2'" in str(error.value)


@pytest.mark.usefixtures("no_network")
def test_revision_by_commit_and_by_branch(hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints) -> None:
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    main = add_to_hub_cache(hub_cache, REPO_ID, checkpoint)
    other = add_to_hub_cache(hub_cache, REPO_ID, checkpoint, commit="a" * 40, branch="dev")
    assert resolve_source(REPO_ID) == main
    assert resolve_source(f"{REPO_ID}@dev") == other
    assert resolve_source(f"{REPO_ID}@{COMMIT}") == main


@pytest.mark.usefixtures("no_network")
def test_incomplete_download_is_named(hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints) -> None:
    snapshot = add_to_hub_cache(hub_cache, REPO_ID, shared_phi3_checkpoint(PHI35_MINI))
    (snapshot / "config.json").unlink()
    with pytest.raises(PhiquantError, match="incomplete.*huggingface-cli download"):
        resolve_source(REPO_ID)


def test_a_folder_that_exists_wins_over_the_model_id(
    cached_phi35: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / REPO_ID
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_source(REPO_ID) == Path(REPO_ID)


def test_refs_cannot_lead_out_of_the_repository(hub_cache: Path, cached_phi35: Path) -> None:
    (cached_phi35.parents[1] / "refs" / "main").write_text("../../elsewhere")
    with pytest.raises(PhiquantError, match="not in the Hugging Face cache"):
        cached_snapshot(ModelId("microsoft", "Phi-3.5-mini-instruct"), hub_cache)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HF_HUB_CACHE": "/a", "HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/a"),
        ({"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/b"}, "/legacy"),
        ({"HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/b/hub"),
        ({"XDG_CACHE_HOME": "/c"}, "/c/huggingface/hub"),
        ({}, str(Path("~/.cache/huggingface/hub").expanduser())),
    ],
)
def test_cache_folder_precedence(environ: dict[str, str], expected: str) -> None:
    assert hub_cache_dir(environ) == Path(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("microsoft/Phi-3.5-mini-instruct", ModelId("microsoft", "Phi-3.5-mini-instruct")),
        ("microsoft/phi-4@main", ModelId("microsoft", "phi-4", "main")),
        (
            "microsoft/phi-2@ef382358ec9e382308935a992d908de099b64c23",
            ModelId("microsoft", "phi-2", "ef382358ec9e382308935a992d908de099b64c23"),
        ),
        ("phi-2", None),  # bare names: a mistyped local folder, not an id
        ("./microsoft/phi-2", None),
        ("../phi/x", None),
        ("models/phi.gguf", None),
        ("a/b/c", None),
        ("/abs/path", None),
    ],
)
def test_model_id_syntax(text: str, expected: ModelId | None) -> None:
    assert parse_model_id(text) == expected
