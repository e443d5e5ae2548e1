"""GPT-2 style byte-level BPE vocabularies (Phi-1/1.5/2, Phi-4, Phi-4-mini) as llama.cpp's `gpt2` tokenizer.

tokenizer.json is read with the `tokenizers` library (the pre-tokenizer checks run it); the token list is
the BPE model's vocabulary, overlaid with the Hugging Face added tokens at their real ids, padded to
config.json's vocab_size with unused `[PAD{id}]` entries (Phi-2 knows 50295 tokens for 51200 embedding
rows, Phi-4-mini 200029 for 200064).  Types follow llama.cpp's converter (conversion/base.py,
get_vocab_base): added tokens that are special, or look special (`<|...|>`), are CONTROL, other added
tokens USER_DEFINED, everything else NORMAL.  Merges keep their rank order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFValueType

from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.json_fields import is_token_id, json_object
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum
from phiquant.vocab.pieces import TokenType
from phiquant.vocab.pretokenizer import KnownPreTokenizer, identify_pre_tokenizer, load_tokenizer
from phiquant.vocab.special import AddedToken, added_tokens

TOKENIZER_JSON = "tokenizer.json"


@dataclass
class BPEVocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # "left right", rank order
    pre_tokenizer: KnownPreTokenizer
    added: list[AddedToken]
    post_processor_adds_bos: bool
    warnings: list[str] = field(default_factory=list)

    def token_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for i, text in enumerate(self.tokens):
            ids.setdefault(text, i)
        return ids

    def metadata(self) -> list[Metadatum]:
        return [
            Metadatum("tokenizer.ggml.model", "gpt2", GGUFValueType.STRING),
            Metadatum("tokenizer.ggml.pre", self.pre_tokenizer.llama_cpp_name, GGUFValueType.STRING),
            Metadatum("tokenizer.ggml.tokens", self.tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
            Metadatum(
                "tokenizer.ggml.token_type", self.token_types, GGUFValueType.ARRAY, GGUFValueType.INT32
            ),
            Metadatum("tokenizer.ggml.merges", self.merges, GGUFValueType.ARRAY, GGUFValueType.STRING),
        ]


def is_byte_level_bpe(checkpoint: Checkpoint) -> bool:
    """Whether tokenizer.json holds a GPT-2 style byte-level BPE (a ByteLevel pre-tokenizer or decoder).

    Phi-3's tokenizer.json is also a BPE model, but SentencePiece-shaped (byte fallback, no pre-tokenizer);
    this is what tells the two apart, whatever tokenizer_config.json's tokenizer_class says (fine-tunes
    drop it or write GPT2TokenizerFast, which llama.cpp's exact-string test sends down the wrong path).
    """
    document = checkpoint.json_file(TOKENIZER_JSON)
    if document is None:
        return False
    model = document.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return False
    return _mentions_byte_level(document.get("pre_tokenizer")) or _mentions_byte_level(
        document.get("decoder")
    )


def _mentions_byte_level(component: Any) -> bool:
    if isinstance(component, dict):
        if component.get("type") == "ByteLevel":
            return True
        return any(_mentions_byte_level(v) for v in component.values() if isinstance(v, (dict, list)))
    if isinstance(component, list):
        return any(_mentions_byte_level(v) for v in component)
    return False


def read_bpe_vocabulary(checkpoint: Checkpoint, vocab_size: int) -> BPEVocabulary:
    tokenizer_file = checkpoint.path / TOKENIZER_JSON
    document = checkpoint.json_file(TOKENIZER_JSON)
    if document is None:
        raise PhiquantError(
            "no tokenizer.json: phiquant reads byte-level BPE tokenizers from it (vocab.json and merges.txt "
            "alone do not say how text is split); save the tokenizer with transformers to write one",
            path=checkpoint.path,
        )
    model = json_object(document, "model", tokenizer_file)
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise PhiquantError("model.vocab or model.merges is missing", path=tokenizer_file)
    tokenizer = load_tokenizer(tokenizer_file)
    pre_tokenizer = identify_pre_tokenizer(document.get("pre_tokenizer"), tokenizer, tokenizer_file)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for text, token_id in vocab.items():
        _check_id(token_id, text, vocab_size, checkpoint)
        tokens[token_id] = text
        types[token_id] = int(TokenType.NORMAL)
    added = added_tokens(checkpoint)
    for token in added:
        _check_id(token.id, token.content, vocab_size, checkpoint)
        tokens[token.id] = token.content
        types[token.id] = int(added_token_type(token))
    return BPEVocabulary(
        tokens=tokens,
        token_types=types,
        merges=merge_strings(merges, tokenizer_file),
        pre_tokenizer=pre_tokenizer,
        added=added,
        post_processor_adds_bos=_post_processor_adds_bos(tokenizer),
        warnings=normalizer_warnings(document.get("normalizer"))
        + ([pre_tokenizer.llama_cpp_caveat] if pre_tokenizer.llama_cpp_caveat else []),
    )


def _check_id(token_id: Any, text: str, vocab_size: int, checkpoint: Checkpoint) -> None:
    if not is_token_id(token_id):
        raise PhiquantError(f"token {text!r} has id {token_id!r}", path=checkpoint.path / TOKENIZER_JSON)
    if token_id >= vocab_size:
        raise PhiquantError(
            f"token {text!r} has id {token_id}, beyond config.json vocab_size {vocab_size}: the embedding "
            "has no row for it (resize the embeddings before converting)",
            path=checkpoint.path,
        )


def added_token_type(token: AddedToken) -> TokenType:
    """llama.cpp's converter: special, or special-looking (`<|...|>`, `<｜...｜>`), means CONTROL.

    So Phi-4-mini's tool tokens, which Hugging Face marks special=false, become CONTROL tokens: llama.cpp
    prints them only when asked to render special tokens, where Hugging Face always prints them."""
    text = token.content
    looks_special = (text.startswith("<|") and text.endswith("|>")) or (
        text.startswith("<｜") and text.endswith("｜>")
    )
    return TokenType.CONTROL if token.special or looks_special else TokenType.USER_DEFINED


def merge_strings(merges: list[Any], tokenizer_file: Any) -> list[str]:
    """Merges as llama.cpp stores them, "left right": tokenizer.json has either that form or, since
    tokenizers 0.20, [left, right] pairs.  Byte-level tokens never hold a plain space."""
    result = []
    for merge in merges:
        if isinstance(merge, str):
            parts = merge.split(" ")
        elif isinstance(merge, list) and all(isinstance(part, str) for part in merge):
            parts = list(merge)
        else:
            parts = []
        if len(parts) != 2 or not all(parts):
            raise PhiquantError(f"merge {merge!r} is not a pair of byte-level tokens", path=tokenizer_file)
        result.append(f"{parts[0]} {parts[1]}")
    return result


def _post_processor_adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizer.json's post-processor puts a token before a text (GPT-2's ByteLevel adds none)."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    with_special = tokenizer.encode("a", add_special_tokens=True).ids
    return bool(plain) and bool(with_special) and with_special[0] != plain[0]


# llama.cpp's Phi-3 whitespace rule fires when the lower-cased general.name contains one of these, and
# then looks up "</s>", "<unk>" and "<s>" by text with std::unordered_map::at (llama-vocab.cpp): a BPE
# vocabulary has none of them, so loading the file fails.  A fine-tune named "phi3-..." must not say so.
PHI3_NAME_MARKERS = ("phi-3", "phi3")


def llama_cpp_safe_name(name: str) -> str:
    """general.name for a BPE vocabulary: any Phi-3 marker spelt "Phi 3" so llama.cpp's rule stays off."""
    return re.sub(r"(?i)phi-?3", "Phi 3", name)


def normalizer_warnings(normalizer: Any) -> list[str]:
    """llama.cpp's gpt2 tokenizer applies no normalisation; Phi's BPE tokenizers have none."""
    if normalizer is None:
        return []
    kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
    return [
        f"tokenizer.json normalises text ({kind}) before splitting; llama.cpp does not, so it will "
        "tokenize some text differently"
    ]
