"""What every SentencePiece reader produces: llama.cpp's token types and a model's base pieces.

Shared by spm.py (tokenizer.model) and spm_json.py (the same pieces rebuilt from tokenizer.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class TokenType(IntEnum):
    """llama.cpp's token types (llama.h LLAMA_TOKEN_TYPE_*)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass
class BasePieces:
    """A SentencePiece model's own pieces (before added tokens and padding), as llama.cpp stores them."""

    tokens: list[str]
    scores: list[float]
    types: list[int]  # TokenType values
    add_space_prefix: bool
    warnings: list[str]
