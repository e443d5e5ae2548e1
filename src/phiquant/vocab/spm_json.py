"""A SentencePiece vocabulary rebuilt from tokenizer.json, for checkpoints without tokenizer.model.

transformers 5 saves a Phi-3 / Phi-3.5-MoE tokenizer as tokenizer.json alone (its tokenizers-backed
class writes no tokenizer.model), so every fine-tune saved with it lacks the file llama.cpp's converter
needs.  tokenizer.json still holds the SentencePiece model in Hugging Face form: the pieces in id order
(`model.vocab`), BPE merges with byte fallback, and a normalizer that prepends "▁" and turns spaces
into "▁" (what SentencePiece's add_dummy_prefix and whitespace escaping do).

llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) repeatedly merges the adjacent pair whose joined
text is the highest-scoring token; Hugging Face's BPE merges the pair with the lowest merge rank.  Scoring
each piece by minus the rank of the first merge that makes it turns one rule into the other, so llama.cpp
tokenizes exactly as the tokenizer the fine-tune was saved with (ties between whitespace runs included,
which the original model scores equally).  Pieces no merge makes (bytes, single characters) never take
part in a merge; they score 0 like SentencePiece's byte pieces.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from phiquant.checkpoint.json_fields import is_token_id, json_list, json_object
from phiquant.errors import PhiquantError
from phiquant.vocab.pieces import BasePieces, TokenType

SPACE_MARK = "\u2581"
BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")


def is_sentencepiece_layout(tokenizer_json: dict[str, Any]) -> bool:
    model = tokenizer_json.get("model")
    return (
        isinstance(model, dict)
        and model.get("type") == "BPE"
        and bool(model.get("byte_fallback"))
        and isinstance(model.get("vocab"), dict)
    )


def pieces_from_tokenizer_json(tokenizer_json: dict[str, Any], file: Path) -> BasePieces:
    model = tokenizer_json["model"]
    check_normalization(tokenizer_json, file)
    by_id = {index: text for text, index in model["vocab"].items() if is_token_id(index)}
    if len(by_id) != len(model["vocab"]) or sorted(by_id) != list(range(len(by_id))):
        raise PhiquantError("tokenizer.json model.vocab does not number its pieces 0..n-1", path=file)
    tokens = [by_id[i] for i in range(len(by_id))]
    scores = merge_scores(tokens, json_list(model, "merges", file), file)
    unknown = model.get("unk_token")
    types = []
    for text in tokens:
        if text == unknown:
            types.append(int(TokenType.UNKNOWN))
        elif BYTE_PIECE.match(text):
            types.append(int(TokenType.BYTE))
        else:
            types.append(int(TokenType.NORMAL))
    return BasePieces(tokens, scores, types, add_space_prefix=True, warnings=[])


def merge_scores(tokens: list[str], merges: list[Any], file: Path) -> list[float]:
    """Minus the rank of the first merge producing each piece; 0 for pieces no merge produces."""
    scores = [0.0] * len(tokens)
    index = {text: i for i, text in enumerate(tokens)}
    seen: set[int] = set()
    for rank, merge in enumerate(merges):
        parts = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise PhiquantError(f"tokenizer.json merge {merge!r} is not a pair of pieces", path=file)
        left, right = parts
        piece = index.get(left + right)
        if piece is None:
            raise PhiquantError(
                f"tokenizer.json merge {left!r} + {right!r} makes no piece of the vocabulary", path=file
            )
        if piece not in seen:
            seen.add(piece)
            scores[piece] = -float(rank + 1)
    return scores


def check_normalization(tokenizer_json: dict[str, Any], file: Path) -> None:
    """Accept the layout Phi-3's tokenizer.json has, which is what llama.cpp's SentencePiece tokenizer
    does: Prepend("▁") then Replace(" " -> "▁"), no pre-tokenizer."""
    normalizer = json_object(tokenizer_json, "normalizer", file)
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    expected = [
        {"type": "Prepend", "prepend": SPACE_MARK},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK},
    ]
    if steps != expected or tokenizer_json.get("pre_tokenizer") is not None:
        raise PhiquantError(
            "there is no tokenizer.model, and tokenizer.json does not normalise text the way "
            "SentencePiece does (prepend '▁', spaces to '▁'); copy tokenizer.model from the base model",
            path=file,
        )
