"""SentencePiece vocabularies (Phi-3, Phi-3.5, Phi-3.5-MoE) as llama.cpp's `llama` tokenizer.

The token list is the SentencePiece model's pieces, overlaid with the Hugging Face added tokens at
their real ids, padded to config.json's vocab_size with unused `[PAD{id}]` entries: Phi-3 knows
32011 tokens but its embedding has 32064 rows, and llama.cpp requires one token per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.files import MAX_JSON_BYTES
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.vocab.pieces import BasePieces, TokenType
from phiquant.vocab.special import AddedToken, added_tokens

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
    base = read_base_pieces(checkpoint)
    if len(base.tokens) > vocab_size:
        raise PhiquantError(
            f"the tokenizer has {len(base.tokens)} pieces but config.json vocab_size is {vocab_size}",
            path=checkpoint.path,
        )
    tokens = base.tokens + [f"[PAD{i}]" for i in range(len(base.tokens), vocab_size)]
    scores = base.scores + [PADDING_SCORE] * (vocab_size - len(base.tokens))
    types = base.types + [int(TokenType.UNUSED)] * (vocab_size - len(base.tokens))
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
    warnings = base.warnings + normalized_token_warnings(added) + mixed_strip_warnings(added)
    return Vocabulary(tokens, scores, types, added, base.add_space_prefix, warnings)


# Tokens llama.cpp's name-keyed Phi-3 rule leaves alone (llama-vocab.cpp clears RSTRIP on them).
NEVER_RSTRIPPED = frozenset({"<unk>", "<s>", "<|endoftext|>"})


def mixed_strip_warnings(added: list[AddedToken]) -> list[str]:
    """llama.cpp has one whitespace rule for all added tokens of a Phi-3 vocabulary (RSTRIP on every
    one, or on none, chosen by general.name); a fine-tune that adds tokens with the other flag than the
    base tokens cannot be reproduced by llama.cpp's own tokenizer (phiquant's runtime uses the flags)."""
    governed = [t for t in added if t.content not in NEVER_RSTRIPPED]
    stripping = [t.content for t in governed if t.rstrip]
    keeping = [t.content for t in governed if not t.rstrip]
    if not stripping or not keeping:
        return []
    minority = keeping if len(keeping) <= len(stripping) else stripping
    return [
        f"added tokens {', '.join(minority[:3])}{' ...' if len(minority) > 3 else ''} "
        f"{'keep' if minority is keeping else 'strip'} the whitespace after them unlike the other added "
        "tokens; llama.cpp applies one rule to all, so its own tokenizer differs after them (phiquant's "
        "chat and server follow each token's flag)"
    ]


def normalized_token_warnings(added: list[AddedToken]) -> list[str]:
    """Hugging Face matches a `normalized` added token in the normalised text, where SentencePiece's
    prepended "▁" has become part of it: it only matches at the start or after a space, and takes the
    space with it.  llama.cpp matches added tokens in the raw text, anywhere (llama-vocab.cpp,
    tokenizer_st_partition).  transformers' `add_tokens(["<x>"])` makes such tokens."""
    texts = [t.content for t in added if t.normalized and not t.special]
    if not texts:
        return []
    return [
        f"added tokens {', '.join(texts[:3])}{' ...' if len(texts) > 3 else ''} are 'normalized': Hugging Face "
        "matches them only at the start or after a space (and folds the space into them), llama.cpp "
        "anywhere, so text around them tokenizes differently; save them with normalized=false to avoid this"
    ]


def read_base_pieces(checkpoint: Checkpoint) -> BasePieces:
    """The pieces of tokenizer.model, or, when a fine-tune was saved without it (transformers 5 writes
    only tokenizer.json), the same pieces rebuilt from tokenizer.json (vocab/spm_json.py)."""
    model_file = checkpoint.file("tokenizer.model")
    if model_file is not None:
        processor, normalizer = _load_sentencepiece(model_file)
        ids = range(processor.vocab_size())
        try:
            tokens = [processor.id_to_piece(i) for i in ids]
        except UnicodeDecodeError as exc:  # found by fuzzing: protobuf strings are not checked for UTF-8
            raise PhiquantError(
                f"not a valid SentencePiece model: a piece is not UTF-8 ({exc.reason})", path=model_file
            ) from None
        return BasePieces(
            tokens=tokens,
            scores=[processor.get_score(i) for i in ids],
            types=[int(_piece_type(processor, i)) for i in ids],
            add_space_prefix=normalizer.add_dummy_prefix,
            warnings=normalization_warnings(normalizer),
        )
    tokenizer_json = checkpoint.json_file("tokenizer.json")
    from phiquant.vocab import spm_json  # only for checkpoints without tokenizer.model

    if tokenizer_json is None or not spm_json.is_sentencepiece_layout(tokenizer_json):
        raise PhiquantError(
            "no tokenizer.model: this model's tokenizer is SentencePiece (tokenizer_class "
            f"{_tokenizer_class(checkpoint)!r}) and needs that file, or a tokenizer.json holding the same pieces",
            path=checkpoint.path,
        )
    return spm_json.pieces_from_tokenizer_json(tokenizer_json, checkpoint.path / "tokenizer.json")


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
    except (RuntimeError, OSError, UnicodeDecodeError) as exc:  # the last found by fuzzing
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
