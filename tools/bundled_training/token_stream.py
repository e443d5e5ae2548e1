"""The training token stream: documentation chunks and chat conversations, reshuffled every epoch.

Step n always reads tokens [n * tokens_per_step, (n + 1) * tokens_per_step) of one fixed stream that
depends only on the seed, so a resumed run sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import numpy as np
import sentencepiece
from tokenizers import Tokenizer

from .chat_samples import build_conversations
from .rst_document import Explanation, PlainDocument

CHUNK_CHARACTERS = 6000  # ~1600 tokens: longer than a 512-token window, short enough to mix well
# Share of the documented objects turned into a conversation in each epoch (a different share, with
# different question wording, every epoch): about a sixth of the training tokens end up being chat.
CONVERSATION_SHARE = 0.5
# How llama.cpp and the `tokenizers` library read tokenizer.json: a "▁" starts the text after every
# special token.  transformers 5's LlamaTokenizer does not add it (Metaspace, prepend_scheme="first");
# a quarter of the conversations are tokenized that way so the model copes with both.
TRANSFORMERS_STYLE_SHARE = 0.25


def document_chunks(document: PlainDocument) -> list[str]:
    """The document cut at paragraph boundaries into pieces of about CHUNK_CHARACTERS."""
    chunks, current = [], ""
    for paragraph in document.text.split("\n\n"):
        if current and len(current) + len(paragraph) > CHUNK_CHARACTERS:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    return [*chunks, current] if current else chunks


class TrainingStream:
    def __init__(
        self,
        documents: list[PlainDocument],
        processor: sentencepiece.SentencePieceProcessor,
        tokenizer_json: Tokenizer,
        transformers_tokenize: Callable[[str], list[int]],
        end_of_text_id: int,
        seed: int,
    ) -> None:
        self.seed = seed
        self.end_of_text_id = end_of_text_id
        self.tokenizer_json = tokenizer_json
        self.transformers_tokenize = transformers_tokenize
        chunks = [chunk for document in documents for chunk in document_chunks(document)]
        self.chunk_tokens = [ids + [end_of_text_id] for ids in processor.encode(chunks)]
        self.explanations: list[Explanation] = [
            item for document in documents for item in document.explanations
        ]
        self.epoch_starts = [0]  # global offset where each built epoch begins
        self.epochs: dict[int, np.ndarray] = {}

    def tokens(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the endless stream of epochs."""
        pieces, position = [], start
        while position < start + count:
            epoch = self._epoch_containing(position)
            offset = position - self.epoch_starts[epoch]
            piece = self.epochs[epoch][offset : offset + start + count - position]
            pieces.append(piece)
            position += len(piece)
        for old in [epoch for epoch in self.epochs if epoch < self._epoch_containing(start)]:
            del self.epochs[old]  # keep memory flat over long runs
        return np.concatenate(pieces)

    def fingerprint(self) -> str:
        """A short hash of the tokenized documents and the explanations conversations are made from."""
        digest = hashlib.sha256()
        for tokens in self.chunk_tokens:
            digest.update(np.asarray(tokens, dtype=np.int32).tobytes())
        for explanation in self.explanations:
            digest.update(f"{explanation.kind}|{explanation.subject}|{explanation.answer}".encode())
        return digest.hexdigest()[:16]

    def first_epoch_length(self) -> int:
        """Tokens in one pass over the data (epochs differ slightly: each draws its own conversations)."""
        self._ensure_built(0)
        return len(self.epochs[0])

    def epoch_tokens(self, epoch: int) -> np.ndarray:
        """One epoch: every chunk plus this epoch's conversations, in this epoch's shuffled order."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        chosen = [item for item in self.explanations if rng.random() < CONVERSATION_SHARE]
        conversations = build_conversations(chosen, seed=rng.randrange(1 << 30))
        segments = list(self.chunk_tokens) + [
            self._tokenize_conversation(text, rng) for text in conversations
        ]
        rng.shuffle(segments)
        return np.fromiter((token for segment in segments for token in segment), dtype=np.int32)

    def _tokenize_conversation(self, text: str, rng: random.Random) -> list[int]:
        if rng.random() < TRANSFORMERS_STYLE_SHARE:
            return self.transformers_tokenize(text)
        return self.tokenizer_json.encode(text, add_special_tokens=False).ids

    def _epoch_containing(self, position: int) -> int:
        while True:
            for epoch in range(len(self.epoch_starts) - 1):
                if self.epoch_starts[epoch] <= position < self.epoch_starts[epoch + 1]:
                    self._ensure_built(epoch)
                    return epoch
            last = len(self.epoch_starts) - 1
            self._ensure_built(last)
            self.epoch_starts.append(self.epoch_starts[last] + len(self.epochs[last]))

    def _ensure_built(self, epoch: int) -> None:
        if epoch not in self.epochs:
            self.epochs[epoch] = self.epoch_tokens(epoch)
