"""Files that ship inside phiquant: the default model and the evaluation and calibration texts.

`phiquant-tiny-phi35-pydocs` is a ~11 M-parameter Phi-3.5-architecture model trained from scratch on the
Python documentation by tools/train_bundled_model.py; its README.md is the model card.  `texts/` holds
the held-out evaluation text and the importance-matrix calibration text, made from disjoint documents
the model never trained on (texts/README.md records their source and license).
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "phiquant-tiny-phi35-pydocs"
DEFAULT_MODEL_DIR = BUNDLED_DIR / DEFAULT_MODEL_NAME
TEXTS_DIR = BUNDLED_DIR / "texts"
HELDOUT_TEXT = TEXTS_DIR / "heldout.txt"
CALIBRATION_TEXT = TEXTS_DIR / "calibration.txt"


def bundled_model_dir() -> Path:
    """The bundled model's Hugging Face checkpoint directory."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        from phiquant.errors import PhiquantError

        raise PhiquantError("the bundled model is not installed (reinstall phiquant)", path=DEFAULT_MODEL_DIR)
    return DEFAULT_MODEL_DIR


def heldout_text_path() -> Path:
    """The held-out evaluation text: Python documentation the bundled model never trained on."""
    return HELDOUT_TEXT


def calibration_text_path() -> Path:
    """The importance-matrix calibration text (never used for evaluation)."""
    return CALIBRATION_TEXT
