"""Which documents train the model, which are held out for evaluation, which become calibration text.

The split is by whole document and depends only on document names (hashed with a fixed salt), never on
the training seed: every model this script trains, with any seed, leaves the same documents out, so the
shipped held-out text stays unseen by all of them.  Calibration documents are a third, disjoint set: an
importance matrix computed on the evaluation text would flatter the quantized model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .chat_samples import build_conversations
from .rst_document import PlainDocument

SPLIT_SALT = "phiquant-bundled-split-v1"
HELDOUT_CHARACTERS = 300_000
CALIBRATION_DOCUMENT_CHARACTERS = 150_000
CALIBRATION_CONVERSATIONS_PER_DOCUMENT = 20
# Documents small enough that several fit in the held-out budget (variety over one long chapter).
LARGEST_EVALUATION_DOCUMENT = 40_000
# Calibration should exercise code as much as prose, so only code-rich documents qualify.
SMALLEST_CALIBRATION_CODE_SHARE = 0.15
# Kept for training only: legal text, tables of contents and the glossary (the best source of
# definitions for chat turns) make poor or wasteful evaluation text.
TRAINING_ONLY = frozenset(
    {"license", "copyright", "contents", "about", "bugs", "glossary", "whatsnew/changelog"}
)
FENCE = re.compile(r"^```", re.MULTILINE)


@dataclass
class CorpusSplit:
    train: list[PlainDocument]
    heldout: list[PlainDocument]
    calibration: list[PlainDocument]


def split_documents(documents: list[PlainDocument]) -> CorpusSplit:
    split = CorpusSplit(train=[], heldout=[], calibration=[])
    heldout_size = calibration_size = 0
    for document in sorted(documents, key=_split_key):
        eligible = document.name not in TRAINING_ONLY and len(document.text) <= LARGEST_EVALUATION_DOCUMENT
        if eligible and heldout_size < HELDOUT_CHARACTERS:
            split.heldout.append(document)
            heldout_size += len(document.text)
        elif (
            eligible
            and calibration_size < CALIBRATION_DOCUMENT_CHARACTERS
            and _code_share(document) >= SMALLEST_CALIBRATION_CODE_SHARE
        ):
            split.calibration.append(document)
            calibration_size += len(document.text)
        else:
            split.train.append(document)
    for part in (split.train, split.heldout, split.calibration):
        part.sort(key=lambda document: document.name)
    return split


def _split_key(document: PlainDocument) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}/{document.name}".encode()).hexdigest()


def _code_share(document: PlainDocument) -> float:
    return describe_mix(document.text)["code"] / len(document.text)


def heldout_text(documents: list[PlainDocument]) -> str:
    """Plain documentation text, documents in name order separated by a blank line."""
    return "\n".join(document.text for document in documents)


def calibration_text(documents: list[PlainDocument]) -> str:
    """Prose and code from each calibration document, each followed by chat conversations about it.

    The conversations are rendered with the Phi-3.5 chat template, so the text carries the `<|user|>`
    tags as literal strings; tools that tokenize it with special-token parsing see real chat turns.
    """
    parts = []
    for index, document in enumerate(documents):
        parts.append(document.text)
        conversations = build_conversations(document.explanations, seed=index)
        parts.extend(conversations[:CALIBRATION_CONVERSATIONS_PER_DOCUMENT])
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def describe_mix(text: str) -> dict[str, int]:
    """Characters of prose, code (inside ``` fences) and chat (rendered conversations) in `text`."""
    code = chat = 0
    in_code = False
    for line in text.splitlines(keepends=True):
        if FENCE.match(line):
            in_code = not in_code
            code += len(line)
        elif in_code:
            code += len(line)
        elif any(
            tag in line for tag in ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>")
        ):
            chat += len(line)
    return {"prose": len(text) - code - chat, "code": code, "chat": chat, "total": len(text)}
