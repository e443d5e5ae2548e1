"""SentencePiece vocabularies (Phi-3, Phi-3.5, Phi-3.5-MoE) as llama.cpp's `llama` tokenizer.

The token list is the SentencePiece model's pieces, overlaid with the Hugging Face added tokens at
their real ids, padded to config.json's vocab_size with unused `[PAD{id}]` entries: Phi-3 knows
32011 tokens but its embedding has 32064 rows, and llama.cpp requires one token per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.files import MAX_JSON_BYTES
from phiquant.errors import PhiquantError
from phiquant.gguf_io import Metadatum
from phiquant.vocab.special import AddedToken, added_tokens


class TokenType(IntEnum):
    """llama.cpp's token types (llama.h LLAMA_TOKEN_TYPE_*)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Scores llama.cpp's converter gives tokens that are not SentencePiece pieces; only their order
# relative to real pieces matters to the tokenizer, and these never win a merge.
ADDED_TOKEN_SCORE = -1000.0
PADDING_SCORE = -10000.0


@dataclass
class Vocabulary:
    tokens: list[str]
    scores: list[float]
    token_types: list[int]
    added: list[AddedToken]
    add_space_prefix: bool
    warnings: list[str]

    def token_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for i, text in enumerate(self.tokens):
            ids.setdefault(text, i)
        return ids

    def metadata(self) -> list[Metadatum]:
        return [
            Metadatum("tokenizer.ggml.model", "llama", GGUFValueType.STRING),
            Metadatum("tokenizer.ggml.pre", "default", GGUFValueType.STRING),
            Metadatum("tokenizer.ggml.tokens", self.tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
            Metadatum("tokenizer.ggml.scores", self.scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
            Metadatum(
                "tokenizer.ggml.token_type", self.token_types, GGUFValueType.ARRAY, GGUFValueType.INT32
            ),
            Metadatum("tokenizer.ggml.add_space_prefix", self.add_space_prefix, GGUFValueType.BOOL),
        ]


def read_sentencepiece_vocabulary(checkpoint: Checkpoint, vocab_size: int) -> Vocabulary:
    model_file = checkpoint.file("tokenizer.model")
    if model_file is None:
        raise PhiquantError(
            "no tokenizer.model: this model's tokenizer is SentencePiece (tokenizer_class "
            f"{_tokenizer_class(checkpoint)!r}) and needs that file",
            path=checkpoint.path,
        )
    processor, normalizer = _load_sentencepiece(model_file)
    n_pieces = processor.vocab_size()
    if n_pieces > vocab_size:
        raise PhiquantError(
            f"tokenizer.model has {n_pieces} pieces but config.json vocab_size is {vocab_size}",
            path=model_file,
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [PADDING_SCORE] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(n_pieces):
        tokens[i] = processor.id_to_piece(i)
        scores[i] = processor.get_score(i)
        types[i] = int(_piece_type(processor, i))
    added = added_tokens(checkpoint)
    for token in added:
        if token.id >= vocab_size:
            raise PhiquantError(
                f"added token {token.content!r} has id {token.id}, beyond config.json vocab_size {vocab_size}: "
                "the embedding has no row for it (resize the embeddings before converting)",
                path=checkpoint.path,
            )
        tokens[token.id] = token.content
        scores[token.id] = ADDED_TOKEN_SCORE
        types[token.id] = int(TokenType.CONTROL if token.special else TokenType.USER_DEFINED)
    return Vocabulary(
        tokens, scores, types, added, normalizer.add_dummy_prefix, normalization_warnings(normalizer)
    )


def normalization_warnings(normalizer: Any) -> list[str]:
    """llama.cpp applies no SentencePiece normalisation; Phi-3's model uses none ("identity").
    A fine-tune whose tokenizer.model normalises (NFKC, whitespace folding) will tokenize
    differently under llama.cpp, so say so at conversion time."""
    problems = []
    if normalizer.name and normalizer.name != "identity":
        problems.append(f"normalisation rule {normalizer.name!r}")
    if normalizer.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces")
    if not problems:
        return []
    return [
        f"tokenizer.model uses {' and '.join(problems)}, which llama.cpp does not apply: "
        "llama.cpp will tokenize some whitespace and Unicode text differently"
    ]


def _tokenizer_class(checkpoint: Checkpoint) -> str | None:
    return (checkpoint.json_file("tokenizer_config.json") or {}).get("tokenizer_class")


def _load_sentencepiece(model_file: Path) -> tuple[Any, Any]:
    import sentencepiece
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    if model_file.stat().st_size > MAX_JSON_BYTES:
        raise PhiquantError(
            f"is larger than {MAX_JSON_BYTES >> 20} MiB; not a SentencePiece model", path=model_file
        )
    data = model_file.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise PhiquantError(
            f"not a valid SentencePiece model ({type(exc).__name__})", path=model_file
        ) from exc
    if not proto.pieces:
        raise PhiquantError("not a valid SentencePiece model (no pieces)", path=model_file)
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as exc:
        raise PhiquantError(f"not a valid SentencePiece model: {exc}", path=model_file) from exc
    return processor, proto.normalizer_spec


def _piece_type(processor: Any, piece_id: int) -> TokenType:
    if processor.is_unknown(piece_id):
        return TokenType.UNKNOWN
    if processor.is_control(piece_id):
        return TokenType.CONTROL
    if processor.is_unused(piece_id):
        return TokenType.UNUSED
    if processor.is_byte(piece_id):
        return TokenType.BYTE
    return TokenType.NORMAL
