"""The held-out evaluation text and the calibration text that ship with phiquant, with their provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .corpus_splits import SPLIT_SALT, CorpusSplit, calibration_text, describe_mix, heldout_text
from .debian_corpus import CorpusSource

LICENSE_FILE = "LICENSE-PSF.txt"

TEXTS_README = """\
# Texts shipped with phiquant

Both files are derived from the Python 3.11 documentation sources (`_sources/**/*.rst.txt`) in Debian's
`{package}` package, version `{version}` (.deb sha256 `{deb_sha256}`), converted to plain text by
`tools/train_bundled_model.py` (reStructuredText markup rendered as a reader sees it; code as Markdown
fences; wrapped prose lines joined).

License: Python Software Foundation License Version 2 (PSF-2.0); code examples in the documentation are
also available under the Zero-Clause BSD license.  "Copyright © 2001-2023 Python Software Foundation. All
rights reserved."  The PSF License Agreement is in `{license_file}`.

| file | what | documents | characters | sha256 |
|---|---|---|---|---|
| `heldout.txt` | evaluation text (perplexity): plain documentation text | {heldout_count} | {heldout_chars} | `{heldout_sha}` |
| `calibration.txt` | importance-matrix calibration: prose, code and Phi-3.5 chat turns | {calibration_count} | {calibration_chars} | `{calibration_sha}` |

The two are made from disjoint sets of whole documents, and the bundled model never trained on either:
documents are split by the SHA-256 of `"{salt}/<document name>"`, independent of the training seed.
`calibration.txt` mixes {prose} characters of prose, {code} of code (inside ``` fences) and {chat} of chat
conversations rendered with the Phi-3.5 chat template (`<|user|>` ... `<|end|>` as literal text; the
questions are template-written, the answers are documentation text).  `manifest.json` lists the
documents of each file.
"""  # noqa: E501 (Markdown table rows)


def write_shipped_texts(split: CorpusSplit, source: CorpusSource, license_text: str, directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    heldout = heldout_text(split.heldout)
    calibration = calibration_text(split.calibration)
    (directory / "heldout.txt").write_text(heldout, encoding="utf-8")
    (directory / "calibration.txt").write_text(calibration, encoding="utf-8")
    (directory / LICENSE_FILE).write_text(license_text, encoding="utf-8")
    manifest = {
        "source": {
            "debian_package": source.package,
            "version": source.version,
            "deb_sha256": source.deb_sha256,
            "license": "PSF-2.0",
            "split_salt": SPLIT_SALT,
        },
        "heldout.txt": _describe(heldout, [document.name for document in split.heldout]),
        "calibration.txt": {
            **_describe(calibration, [document.name for document in split.calibration]),
            "mix_characters": describe_mix(calibration),
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    mix = manifest["calibration.txt"]["mix_characters"]
    (directory / "README.md").write_text(
        TEXTS_README.format(
            package=source.package,
            version=source.version,
            deb_sha256=source.deb_sha256 or "(not recorded)",
            license_file=LICENSE_FILE,
            salt=SPLIT_SALT,
            heldout_count=len(split.heldout),
            heldout_chars=len(heldout),
            heldout_sha=manifest["heldout.txt"]["sha256"],
            calibration_count=len(split.calibration),
            calibration_chars=len(calibration),
            calibration_sha=manifest["calibration.txt"]["sha256"],
            prose=mix["prose"],
            code=mix["code"],
            chat=mix["chat"],
        ),
        encoding="utf-8",
    )
    return manifest


def _describe(text: str, documents: list[str]) -> dict:
    return {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "characters": len(text),
        "documents": documents,
    }
