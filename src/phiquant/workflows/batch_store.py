"""Where `phiquant batch` keeps its outputs: a local folder (every worker must see it), or an object
store URL read and written through fsspec (`s3://bucket/prefix` with s3fs, `gs://` with gcsfs, any
protocol fsspec knows; `file://` is a local folder).  fsspec is the optional `storage` extra.

With a URL, a worker writes each file into a node-local stage (phiquant's cache, `batch-stage/`,
atomically as for a local folder), then uploads it under a temporary key and moves it to its name, and
records it in the model's manifest at the URL only once every file is there: an object the manifest
does not record, or whose size and sha256 differ from the record, is redone.  A rerun from any machine
therefore verifies against the store, by reading every recorded object through sha256.

A file's evaluation needs the file and its reference on the node that runs it: the stage keeps them
(the ladder's node has them already; another node downloads them and checks their sha256 against the
manifest); the node that writes the report and card removes its stage after uploading them.  The
reference logits stay in that node's own reference cache, not in the store: the
evaluation reads the reference file anyway (its output weight turns the cached states into logits), so
a node that has to download the reference computes its states again rather than fetching states of the
same order of size; on one node, as with the embedded Ray, every evaluation reuses them.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiquant import temporary_files
from phiquant.errors import PhiquantError

STORAGE_EXTRA = "pip install 'phiquant[storage]'"
CHUNK_BYTES = 1 << 22  # reads of files and store objects: a few MB at a time, whatever their size


def is_url(output: str) -> bool:
    """True for an fsspec URL (`protocol://...`) other than a local `file://` one."""
    return "://" in output and not output.startswith("file://")


def local_path(output: str) -> Path:
    return Path(output[len("file://") :]) if output.startswith("file://") else Path(output)


def _fsspec(url: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise PhiquantError(f"an object store output needs fsspec: {STORAGE_EXTRA}", path=url) from None
    return fsspec


@dataclass(frozen=True)
class Store:
    """One folder of outputs: `url` (an fsspec URL) or, when it is not a URL, a local path."""

    url: str

    @property
    def remote(self) -> bool:
        return is_url(self.url)

    def child(self, name: str) -> Store:
        return Store(f"{self.url.rstrip('/')}/{name}")

    def stage(self) -> Path:
        """The local folder files are written in before upload (the folder itself when local)."""
        if not self.remote:
            return local_path(self.url)
        from phiquant.cache import sub_cache

        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return sub_cache("batch-stage") / f"{digest}-{self.url.rstrip('/').rsplit('/', 1)[-1]}"

    def clear_stage(self) -> None:
        """Remove this node's staged copies once everything is in the store (nothing, when local)."""
        if self.remote:
            shutil.rmtree(self.stage(), ignore_errors=True)

    # -- the object store --------------------------------------------------------------------------

    def _fs(self) -> tuple[Any, str]:
        fsspec = _fsspec(self.url)
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except ImportError as error:  # fsspec names the package its protocol needs (gcsfs, adlfs...)
            text = str(error).strip().splitlines()[0] if str(error).strip() else error.name
            raise PhiquantError(f"fsspec cannot open this protocol: {text}", path=self.url) from None
        except (ValueError, TypeError) as error:
            raise PhiquantError(f"not a storage URL fsspec understands: {error}", path=self.url) from None
        fs.invalidate_cache()  # listings another worker or run changed since this process read them
        return fs, str(root).rstrip("/")

    def _call(self, what: str, action: Any) -> Any:
        try:
            return action()
        except PhiquantError:
            raise
        except Exception as error:  # noqa: BLE001 - credentials, network, permissions: one line naming it
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PhiquantError(f"cannot {what}: {text}", path=self.url) from None

    def check(self) -> None:
        """Fail now, in one line naming the URL, when the store cannot be listed and written."""
        if not self.remote:
            local_path(self.url).mkdir(parents=True, exist_ok=True)
            return
        fs, root = self._fs()
        probe = f"{root}/.phiquant-probe-{uuid.uuid4().hex}"

        def write_and_remove() -> None:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)

        self._call("write to the store", write_and_remove)

    def read_text(self, name: str) -> str | None:
        if not self.remote:
            try:
                return (local_path(self.url) / name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
        fs, root = self._fs()

        def read() -> str | None:
            try:
                data: bytes = fs.cat_file(f"{root}/{name}")
            except FileNotFoundError:
                return None
            return data.decode("utf-8", errors="replace")

        result: str | None = self._call(f"read {name}", read)
        return result

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (local_path(self.url) / name).is_file()
        fs, root = self._fs()
        found: bool = self._call(f"read {name}", lambda: fs.isfile(f"{root}/{name}"))
        return found

    def write_text(self, name: str, text: str) -> None:
        if not self.remote:
            temporary_files.write_text(local_path(self.url) / name, text)
            return
        staged = self.stage() / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        temporary_files.write_text(staged, text)
        self.upload(staged)

    def upload(self, file: Path) -> None:
        """Put a staged file at its name: under a temporary key first, then moved, so the name only ever
        holds a whole file."""
        if not self.remote:
            return
        fs, root = self._fs()
        final = f"{root}/{file.name}"
        partial = f"{final}{temporary_files.PARTIAL_SUFFIX}-{uuid.uuid4().hex[:8]}"

        def put_and_move() -> None:
            fs.put_file(str(file), partial)
            fs.mv(partial, final)

        self._call(f"upload {file.name}", put_and_move)

    def size_and_sha256(self, name: str) -> tuple[int, str] | None:
        """The object's size and sha256, read from the store; None when it is not there."""
        if not self.remote:
            path = local_path(self.url) / name
            return (path.stat().st_size, sha256_of(path)) if path.is_file() else None
        fs, root = self._fs()

        def digest() -> tuple[int, str] | None:
            key = f"{root}/{name}"
            if not fs.isfile(key):
                return None
            with fs.open(key, "rb", block_size=CHUNK_BYTES) as f:
                return hashed_read(f)

        result: tuple[int, str] | None = self._call(f"read {name}", digest)
        return result

    def fetch(self, name: str, size: int, sha256: str) -> Path:
        """The staged copy of a recorded object, downloaded when the stage lacks it or holds other bytes."""
        staged = self.stage() / name
        if not self.remote:
            return staged
        if staged.is_file() and staged.stat().st_size == size and sha256_of(staged) == sha256:
            return staged
        fs, root = self._fs()
        staged.parent.mkdir(parents=True, exist_ok=True)

        def download(out: Any) -> None:
            with fs.open(f"{root}/{name}", "rb", block_size=CHUNK_BYTES) as f:
                copied = hashed_read(f, copy_to=out)
            if copied != (size, sha256):
                raise PhiquantError(
                    f"{name} in the store is not the file its manifest records", path=self.url
                )

        self._call(f"download {name}", lambda: temporary_files.write_with(staged, download))
        return staged


def hashed_read(source: Any, copy_to: Any = None) -> tuple[int, str]:
    """Size and sha256 of everything `source` holds, read a chunk at a time (each chunk also written to
    `copy_to` when given)."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return size, digest.hexdigest()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashed_read(f)[1]
