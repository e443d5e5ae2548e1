"""A Hugging Face hub cache built the way huggingface_hub lays it out, for tests that must not download.

    <cache>/models--<org>--<name>/refs/<branch>         the commit hash, no newline
    <cache>/models--<org>--<name>/snapshots/<commit>/F  a relative link to ../../blobs/<sha256 of F>
    <cache>/models--<org>--<name>/blobs/<sha256>        the contents

(huggingface_hub file_download.py: `_create_symlink` makes relative links from snapshots into blobs;
blob names are the file's sha256 for LFS files and its git sha1 otherwise; phiquant never reads them.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest

COMMIT = "3145e03a9fd4cdd7cd953c34d9bbf7ad606122ca"


def add_to_hub_cache(
    cache: Path, repo_id: str, checkpoint: Path, *, commit: str = COMMIT, branch: str = "main"
) -> Path:
    """Store every file of `checkpoint` under `repo_id` at `commit`; `branch` points at it.  Returns the
    snapshot folder."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(checkpoint)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection or resolve a host fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache that HF_HUB_CACHE points at (the other variables cleared)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for variable in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache
