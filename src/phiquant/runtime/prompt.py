"""Turning chat messages into exactly the token ids the Hugging Face tokenizer would produce.

llama.cpp's own tokenizer differs from Hugging Face's around special tokens: it has no per-token
lstrip/rstrip flags (only a Phi-3 rule keyed on the model name), so whitespace next to `<|user|>`
or `<|im_start|>` can come out differently.  phiquant records the flags at conversion time and
splits prompts itself: special tokens are matched in the text (longest first, as HF's added-token
trie does), the whitespace they strip is removed, and only the plain text between them goes
through llama.cpp's tokenizer.  Files phiquant did not make fall back to llama.cpp's tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.gguf_io import GGUFFile
from phiquant.runtime.chat_template import ChatTemplate
from phiquant.runtime.llama import LoadedModel
from phiquant.vocab.pieces import TokenType
from phiquant.vocab.special import EOG_IDS_KEY, LSTRIP_IDS_KEY, RSTRIP_IDS_KEY

# Token types llama.cpp matches as whole tokens inside text (llama-vocab.cpp special token cache).
_MATCHED_TYPES = {int(TokenType.CONTROL), int(TokenType.USER_DEFINED), int(TokenType.UNKNOWN)}


@dataclass(frozen=True)
class SpecialTokenMatcher:
    """The added tokens of a vocabulary and the whitespace each swallows."""

    ids: dict[str, int]
    lstrip: frozenset[int]
    rstrip: frozenset[int]
    pattern: re.Pattern[str] | None

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> SpecialTokenMatcher | None:
        if gguf.get("phiquant.version") is None:
            return None  # not made by phiquant: no strip flags recorded
        tokens = gguf.get("tokenizer.ggml.tokens") or []
        types = gguf.get("tokenizer.ggml.token_type") or []
        ids = {
            text: i for i, (text, kind) in enumerate(zip(tokens, types)) if kind in _MATCHED_TYPES and text
        }
        # Longest first, so "<|endoftext|>" wins over any shorter token it contains.
        alternatives = sorted(ids, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(a) for a in alternatives)) if alternatives else None
        return cls(
            ids, frozenset(gguf.get(LSTRIP_IDS_KEY) or []), frozenset(gguf.get(RSTRIP_IDS_KEY) or []), pattern
        )

    def split(self, text: str) -> list[str | int]:
        """Text pieces and special-token ids, in order, with stripped whitespace removed."""
        if self.pattern is None:
            return [text] if text else []
        parts: list[str | int] = []
        position = 0
        pending_rstrip = False
        for match in self.pattern.finditer(text):
            token_id = self.ids[match.group()]
            before = text[position : match.start()]
            if pending_rstrip:
                before = before.lstrip()
            if token_id in self.lstrip:
                before = before.rstrip()
            if before:
                parts.append(before)
            parts.append(token_id)
            pending_rstrip = token_id in self.rstrip
            position = match.end()
        tail = text[position:]
        if pending_rstrip:
            tail = tail.lstrip()
        if tail:
            parts.append(tail)
        return parts


class PromptTokenizer:
    """Renders chats with the model's template and tokenizes them the Hugging Face way."""

    def __init__(
        self,
        model: LoadedModel,
        gguf: GGUFFile,
        template_override: str | None = None,
        override_origin: str = "--chat-template",
    ):
        self.model = model
        self.matcher = SpecialTokenMatcher.from_gguf(gguf)
        tokens = gguf.get("tokenizer.ggml.tokens") or []
        self.end_ids = end_of_generation_ids(gguf, model)
        source = template_override if template_override is not None else gguf.get("tokenizer.chat_template")
        self.template = (
            ChatTemplate(
                source,
                origin=override_origin if template_override is not None else str(gguf.path),
                bos_token=_token_text(tokens, gguf.get("tokenizer.ggml.bos_token_id")),
                eos_token=_token_text(tokens, gguf.get("tokenizer.ggml.eos_token_id")),
            )
            if source
            else None
        )

    def tokenize(self, text: str) -> list[int]:
        if self.matcher is None:
            return self.model.tokenize(text, add_special=False, parse_special=True)
        ids: list[int] = []
        for part in self.matcher.split(text):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids += self.model.tokenize(part, add_special=False, parse_special=False)
        return ids

    def single_token_ids(self, texts: Sequence[str]) -> frozenset[int]:
        """The ids of those `texts` that this vocabulary holds as one token each."""
        ids = [self.tokenize(text) for text in texts]
        return frozenset(found[0] for found in ids if len(found) == 1)

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """`variables`: more template variables, as `apply_chat_template` passes them (`tools`...)."""
        if self.template is None:
            # No template in the file: plain concatenation is the honest fallback.
            return "\n".join(str(m.get("content", "")) for m in messages) + "\n"
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **variables)

    def chat_tokens(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        return self.tokenize(self.render(messages, add_generation_prompt=add_generation_prompt, **variables))


def _token_text(tokens: list[str], token_id: Any) -> str:
    return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else ""


def end_of_generation_ids(gguf: GGUFFile, model: LoadedModel) -> frozenset[int]:
    """Every id that ends a reply: phiquant's recorded list and llama.cpp's own EOG set."""
    ids = {i for i in (gguf.get(EOG_IDS_KEY) or []) if isinstance(i, int)}
    ids |= {i for i in range(model.n_vocab) if model.is_end_of_generation(i)}
    return frozenset(ids)
