"""The training corpus: the Python 3.11 documentation sources from Debian's `python3.11-doc` package.

Why this corpus: it is English prose with code, ~11 MB, redistributable (PSF License Agreement, with
code examples also under Zero-Clause BSD), and reachable offline through any Debian mirror.  The
package version and .deb hash are pinned so every run trains on the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path


class TrainingSetupError(RuntimeError):
    """Something the person running the script can fix (missing apt, wrong file); printed in one line."""


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    sha256: str
    sources_dir: str  # inside the package: where the .rst.txt sources live
    copyright_file: str
    pool_url: str  # where the exact file can still be fetched once a newer version supersedes it

    @property
    def deb_filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_all.deb"


PYTHON_DOCS = DebianPackage(
    name="python3.11-doc",
    version="3.11.2-6+deb12u9",
    sha256="5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
    sources_dir="usr/share/doc/python3.11/html/_sources",
    copyright_file="usr/share/doc/python3.11-doc/copyright",
    pool_url="https://deb.debian.org/debian-security/pool/updates/main/p/python3.11/",
)


@dataclass(frozen=True)
class CorpusSource:
    """Where the documents came from, for the model card and the texts' README."""

    package: str
    version: str
    deb_sha256: str  # "" when the caller gave an extracted directory
    sources_dir: Path
    copyright_file: Path | None


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_package(package: DebianPackage, directory: Path) -> Path:
    """The pinned .deb in `directory`, fetched with `apt-get download` unless it is already there."""
    deb_path = directory / package.deb_filename
    if deb_path.exists():
        return deb_path
    if shutil.which("apt-get") is None:
        raise TrainingSetupError(
            f"apt-get is not available to download {package.name} {package.version}; fetch "
            f"{package.pool_url}{package.deb_filename} yourself and pass --corpus-deb, or pass --corpus-dir"
        )
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["apt-get", "download", f"{package.name}={package.version}"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not deb_path.exists():
        raise TrainingSetupError(
            f"apt-get could not download {package.name}={package.version} ({result.stderr.strip()[-300:]}); "
            f"if your mirror has moved on, fetch {package.pool_url}{package.deb_filename}, "
            "then pass --corpus-deb"
        )
    return deb_path


def verify_package(deb_path: Path, package: DebianPackage) -> str:
    actual = sha256_of_file(deb_path)
    if actual != package.sha256:
        raise TrainingSetupError(
            f"{deb_path} has sha256 {actual}, expected {package.sha256} "
            f"for {package.name} {package.version}; "
            "pass --allow-unpinned-corpus to train on it anyway (the model card will record its hash)"
        )
    return actual


def extract_package(deb_path: Path, package: DebianPackage, destination: Path) -> CorpusSource:
    """Unpack the documentation sources and the copyright file (pure Python: no dpkg needed)."""
    data_member = _read_ar_member(deb_path, prefix="data.tar")
    wanted = (f"./{package.sources_dir}/", f"./{package.copyright_file}")
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data_member), mode="r:*") as archive:
        members = [
            member for member in archive.getmembers() if member.isfile() and member.name.startswith(wanted)
        ]
        archive.extractall(destination, members=members, filter="data")
    return CorpusSource(
        package=package.name,
        version=package.version,
        deb_sha256=sha256_of_file(deb_path),
        sources_dir=destination / package.sources_dir,
        copyright_file=destination / package.copyright_file,
    )


def _read_ar_member(archive_path: Path, prefix: str) -> bytes:
    """A .deb is an `ar` archive: 8-byte magic, then 60-byte headers each followed by the member data."""
    data = archive_path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise TrainingSetupError(f"{archive_path} is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith(prefix):
            if name.endswith(".zst"):
                raise TrainingSetupError(
                    f"{archive_path}: zstd-compressed packages are not supported; use --corpus-dir"
                )
            return data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are padded to even offsets
    raise TrainingSetupError(f"{archive_path} has no {prefix}* member")


def list_source_files(sources_dir: Path) -> dict[str, str]:
    """Document name ("library/os.path") -> reStructuredText source, in sorted order."""
    files = sorted(sources_dir.rglob("*.rst.txt"))
    if not files:
        raise TrainingSetupError(f"no *.rst.txt files under {sources_dir}")
    return {
        str(path.relative_to(sources_dir))[: -len(".rst.txt")]: path.read_text(encoding="utf-8")
        for path in files
    }


def psf_license_text(copyright_text: str) -> str:
    """The PSF License Agreement as Debian's copyright file quotes it (redistribution must keep it)."""
    start = copyright_text.index("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2")
    end = copyright_text.index("BEOPEN.COM LICENSE AGREEMENT", start)
    return copyright_text[start:end].rstrip() + "\n"
