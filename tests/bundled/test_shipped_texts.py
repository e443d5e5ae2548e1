"""The evaluation and calibration texts: provenance recorded, disjoint from each other, mixed as promised."""

from __future__ import annotations

import hashlib
import json

from phiquant.bundled import CALIBRATION_TEXT, DEFAULT_MODEL_DIR, HELDOUT_TEXT, TEXTS_DIR

PINNED_DEB_SHA256 = "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be"


def manifest() -> dict:
    return json.loads((TEXTS_DIR / "manifest.json").read_text(encoding="utf-8"))


def paragraphs(text: str, shortest: int) -> set[str]:
    return {paragraph.strip() for paragraph in text.split("\n\n") if len(paragraph.strip()) >= shortest}


def test_heldout_and_calibration_come_from_disjoint_documents():
    recorded = manifest()
    heldout_documents = set(recorded["heldout.txt"]["documents"])
    calibration_documents = set(recorded["calibration.txt"]["documents"])
    assert heldout_documents and calibration_documents
    assert not heldout_documents & calibration_documents


def test_heldout_and_calibration_share_no_paragraph():
    # Independent of the manifest: no substantial paragraph of one text appears in the other.
    heldout = paragraphs(HELDOUT_TEXT.read_text(encoding="utf-8"), shortest=120)
    calibration = paragraphs(CALIBRATION_TEXT.read_text(encoding="utf-8"), shortest=120)
    assert len(heldout) > 200 and len(calibration) > 100
    assert not heldout & calibration


def test_texts_are_the_files_the_manifest_describes():
    recorded = manifest()
    for path in (HELDOUT_TEXT, CALIBRATION_TEXT):
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == recorded[path.name]["sha256"]
        assert len(data.decode("utf-8")) == recorded[path.name]["characters"]


def test_provenance_names_package_version_hash_and_license():
    source = manifest()["source"]
    assert (source["debian_package"], source["version"], source["license"]) == (
        "python3.11-doc",
        "3.11.2-6+deb12u9",
        "PSF-2.0",
    )
    assert source["deb_sha256"] == PINNED_DEB_SHA256
    readme = (TEXTS_DIR / "README.md").read_text(encoding="utf-8")
    assert PINNED_DEB_SHA256 in readme and "PSF" in readme
    for directory in (TEXTS_DIR, DEFAULT_MODEL_DIR):
        assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in (directory / "LICENSE-PSF.txt").read_text(
            encoding="utf-8"
        )


def test_calibration_mixes_prose_code_and_phi_chat_turns():
    text = CALIBRATION_TEXT.read_text(encoding="utf-8")
    mix = manifest()["calibration.txt"]["mix_characters"]
    assert all(mix[kind] > 0.1 * mix["total"] for kind in ("prose", "code", "chat"))
    assert text.count("```") >= 100 and text.count("<|user|>\n") >= 100
    assert text.count("<|assistant|>\n") == text.count("<|user|>\n")


def test_heldout_is_plain_text_sized_for_perplexity_windows():
    text = HELDOUT_TEXT.read_text(encoding="utf-8")
    assert 150_000 < len(text) < 400_000
    assert "<|" not in text and ":func:`" not in text and "\n.. " not in text
