"""Model sources by name: a Hugging Face model id resolved from the local hub cache, never the network.

`phiquant convert microsoft/Phi-3.5-mini-instruct` works when `huggingface-cli download` (or
`hf download`, or transformers' `from_pretrained`) has put the model in the standard cache:

    <cache>/models--microsoft--Phi-3.5-mini-instruct/
        refs/main                 the commit hash the `main` branch pointed at when downloaded
        snapshots/<hash>/...      the files, usually links into ../../blobs/
        blobs/<sha256>            the file contents

The cache folder is found as huggingface_hub finds it (HF_HUB_CACHE, the older HUGGINGFACE_HUB_CACHE,
HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub).  phiquant behaves as if
HF_HUB_OFFLINE=1 were always set: nothing is downloaded; a model that is not there gives the command
that downloads it.  A path that exists always wins over an id of the same spelling.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from phiquant.errors import PhiquantError

# Hugging Face repository ids: "org/name" with letters, digits, '-', '_' and '.', optionally @revision.
# Bare names ("gpt2") are legacy ids that no Phi model uses; accepting them would turn every typo of a
# local folder into a cache lookup.
_MODEL_ID = re.compile(
    r"^(?P<org>[A-Za-z0-9][\w.-]{0,95})/(?P<name>[\w.-]{1,96})(?:@(?P<revision>[\w.-]{1,255}))?$",
    re.ASCII,
)
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class ModelId:
    org: str
    name: str
    revision: str = DEFAULT_REVISION

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def cache_folder_name(self) -> str:
        return f"models--{self.org}--{self.name}"

    def download_command(self) -> str:
        revision = "" if self.revision == DEFAULT_REVISION else f" --revision {self.revision}"
        return f"huggingface-cli download {self.repo_id}{revision}"


def parse_model_id(text: str) -> ModelId | None:
    """`org/name[@revision]` as a ModelId, or None when `text` cannot be a Hugging Face model id."""
    match = _MODEL_ID.match(text)
    if match is None or ".." in text or text.endswith((".gguf", "/")):
        return None
    return ModelId(match["org"], match["name"], match["revision"] or DEFAULT_REVISION)


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The hub cache folder, with huggingface_hub's precedence of environment variables."""
    env = os.environ if environ is None else environ
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return Path(env[variable]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """The local path `source` names: itself when it exists, else the cached snapshot of the model id."""
    path = Path(source).expanduser()
    if path.exists() or path.is_symlink():
        return path
    model_id = parse_model_id(os.fspath(source))
    if model_id is None:
        raise PhiquantError("no such file or directory", path=path)
    return cached_snapshot(model_id)


def cached_snapshot(model_id: ModelId, cache: Path | None = None) -> Path:
    """The snapshot folder of `model_id` at its revision (a branch or tag in refs/, or a commit hash)."""
    cache = cache if cache is not None else hub_cache_dir()
    repo = cache / model_id.cache_folder_name
    commit = _read_ref(repo, model_id.revision) or model_id.revision
    snapshot = repo / "snapshots" / commit
    if not _is_plain_name(commit) or not snapshot.is_dir():
        raise PhiquantError(_missing_message(model_id, cache, repo.is_dir()))
    if not (snapshot / "config.json").exists():
        raise PhiquantError(
            f"{model_id.repo_id} is in the Hugging Face cache ({snapshot}) without its config.json: the "
            f"download is incomplete; run `{model_id.download_command()}` to finish it"
        )
    return snapshot


def _read_ref(repo: Path, revision: str) -> str | None:
    ref = repo / "refs" / revision
    if not _is_plain_name(revision):
        return None
    try:
        if ref.is_file() and ref.stat().st_size <= 256:
            return ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _is_plain_name(text: str) -> bool:
    return (
        bool(text) and text not in (".", "..") and "/" not in text and "\\" not in text and "\0" not in text
    )


def _missing_message(model_id: ModelId, cache: Path, repo_known: bool) -> str:
    where = f"revision {model_id.revision!r} of it is not" if repo_known else "it is not"
    return (
        f"{model_id.repo_id}: no such directory, and {where} in the Hugging Face cache ({cache}); "
        f"download it with `{model_id.download_command()}` (phiquant never downloads), or pass the "
        "model's folder"
    )


def snapshot_repo_name(directory: Path) -> str | None:
    """The model name (`Phi-3.5-mini-instruct`) of a hub cache snapshot folder, whose own name is a
    commit hash; None for any other folder."""
    resolved = directory.resolve()
    repo = resolved.parent.parent
    if resolved.parent.name != "snapshots" or not repo.name.startswith("models--"):
        return None
    parts = repo.name.split("--")
    return parts[-1] if len(parts) >= 3 and parts[-1] else None
