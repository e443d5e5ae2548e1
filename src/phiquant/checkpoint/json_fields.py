"""Typed lookups in a checkpoint's JSON files (tokenizer.json, tokenizer_config.json, ...).

These files come with a download and may hold anything at any key.  A reader that does
`document.get("model") or {}` and then `.get(...)` on the result fails with a Python traceback when
the value is a list or a number; these lookups turn a wrong type into one PhiquantError naming the
file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError

# Token ids are written as GGUF uint32; real vocabularies are far below 2^31.
MAX_TOKEN_ID = 2**31 - 1


def json_object(document: Any, key: str, file: Path) -> dict[str, Any]:
    """document[key] when it is an object, {} when absent or null; an error for anything else."""
    value = _lookup(document, key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type(key, "an object", value, file)
    return value


def json_list(document: Any, key: str, file: Path) -> list[Any]:
    """document[key] when it is a list, [] when absent or null; an error for anything else."""
    value = _lookup(document, key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type(key, "a list", value, file)
    return value


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def _lookup(document: Any, key: str) -> Any:
    return document.get(key) if isinstance(document, dict) else None


def _wrong_type(key: str, expected: str, value: Any, file: Path) -> PhiquantError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return PhiquantError(f"{key} must be {expected}, not {shown}", path=file)
