"""Special tokens, end-of-generation ids and the chat template, shared by every tokenizer kind.

llama.cpp decides what ends generation from `tokenizer.ggml.eos_token_id`, `eot_token_id` and
`eom_token_id` plus a hard-coded list of token texts (llama-vocab.cpp).  Phi's
generation_config.json lists several end ids (Phi-3: <|end|>, <|assistant|>, <|endoftext|>), so
phiquant writes them into those three slots explicitly instead of relying on the text heuristic,
and records the full list under `phiquant.eog_token_ids` for its own runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFValueType

from phiquant.checkpoint.directory import Checkpoint
from phiquant.checkpoint.json_fields import is_token_id, json_list, json_object
from phiquant.errors import PhiquantError
from phiquant.model_source import Metadatum

EOG_IDS_KEY = "phiquant.eog_token_ids"
# Hugging Face added-token flags that GGUF has no keys for; phiquant's prompt tokenizer uses them
# to reproduce the HF tokenizer's ids exactly (runtime.prompt).
LSTRIP_IDS_KEY = "phiquant.tokenizer.lstrip_token_ids"
RSTRIP_IDS_KEY = "phiquant.tokenizer.rstrip_token_ids"

# Token texts Phi models use to end a turn, most specific first.
END_OF_TURN_TEXTS = ("<|end|>", "<|im_end|>")

SPECIAL_TOKEN_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass(frozen=True)
class AddedToken:
    """An added token as Hugging Face declares it (tokenizer.json / tokenizer_config.json)."""

    id: int
    content: str
    special: bool
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    single_word: bool = False


@dataclass
class SpecialTokens:
    ids: dict[str, int] = field(default_factory=dict)  # role -> id (bos, eos, unk, pad, eot, eom)
    add_bos: bool | None = None
    add_eos: bool | None = None
    eog_ids: list[int] = field(default_factory=list)
    dropped_eog_ids: list[int] = field(default_factory=list)  # end ids llama.cpp's slots can't hold

    def metadata(self) -> list[Metadatum]:
        items: list[Metadatum] = []
        for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask", "eot", "eom"):
            if role in self.ids:
                key = (
                    "tokenizer.ggml.unknown_token_id"
                    if role == "unk"
                    else f"tokenizer.ggml.{_slot(role)}_token_id"
                )
                items.append(Metadatum(key, self.ids[role], GGUFValueType.UINT32))
        if self.add_bos is not None:
            items.append(Metadatum("tokenizer.ggml.add_bos_token", self.add_bos, GGUFValueType.BOOL))
        if self.add_eos is not None:
            items.append(Metadatum("tokenizer.ggml.add_eos_token", self.add_eos, GGUFValueType.BOOL))
        return items


def _slot(role: str) -> str:
    return {"pad": "padding", "sep": "seperator"}.get(role, role)  # llama.cpp's key spellings


def added_tokens(checkpoint: Checkpoint) -> list[AddedToken]:
    """Added tokens from tokenizer.json, then tokenizer_config.json's added_tokens_decoder for ids
    tokenizer.json lacks (both are written by transformers; fine-tunes sometimes edit only one)."""
    tokens: dict[int, AddedToken] = {}
    tokenizer_json = checkpoint.json_file("tokenizer.json") or {}
    for entry in json_list(tokenizer_json, "added_tokens", checkpoint.path / "tokenizer.json"):
        token_id = entry.get("id") if isinstance(entry, dict) else None
        token = _added_token(entry, token_id, checkpoint, "tokenizer.json")
        tokens[token.id] = token
    config = checkpoint.json_file("tokenizer_config.json") or {}
    decoder = json_object(config, "added_tokens_decoder", checkpoint.path / "tokenizer_config.json")
    for key, entry in decoder.items():
        token = _added_token(entry, _int_key(key, checkpoint), checkpoint, "tokenizer_config.json")
        tokens.setdefault(token.id, token)
    return [tokens[i] for i in sorted(tokens)]


def _int_key(key: str, checkpoint: Checkpoint) -> int:
    try:
        return int(key)
    except ValueError:
        raise PhiquantError(
            f"added_tokens_decoder key {key!r} is not a token id", path=checkpoint.path
        ) from None


def _added_token(entry: Any, token_id: Any, checkpoint: Checkpoint, file: str) -> AddedToken:
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not is_token_id(token_id):
        shown = repr(entry)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise PhiquantError(f"malformed added token {shown} (id {token_id!r})", path=checkpoint.path / file)
    return AddedToken(
        id=token_id,
        content=entry["content"],
        special=bool(entry.get("special", False)),
        lstrip=bool(entry.get("lstrip", False)),
        rstrip=bool(entry.get("rstrip", False)),
        normalized=bool(entry.get("normalized", False)),
        single_word=bool(entry.get("single_word", False)),
    )


def find_special_tokens(checkpoint: Checkpoint, token_ids: dict[str, int], n_vocab: int) -> SpecialTokens:
    """Resolve bos/eos/unk/pad/eot/eom ids and add_bos/add_eos the way transformers would."""
    config = checkpoint.json_file("tokenizer_config.json") or {}
    result = SpecialTokens()
    for role in SPECIAL_TOKEN_ROLES:
        token_id = _resolve_role(config.get(f"{role}_token"), token_ids)
        if token_id is None:
            token_id = checkpoint.config.get(f"{role}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            result.ids[role] = token_id
    for text in END_OF_TURN_TEXTS:
        if text in token_ids:
            result.ids["eot"] = token_ids[text]
            break
    result.add_bos, result.add_eos = _post_processor_additions(checkpoint)
    if isinstance(config.get("add_bos_token"), bool):
        result.add_bos = config["add_bos_token"]
    if isinstance(config.get("add_eos_token"), bool):
        result.add_eos = config["add_eos_token"]
    result.eog_ids = end_of_generation_ids(checkpoint, result.ids, n_vocab)
    _fill_eog_slots(result)
    return result


def _post_processor_additions(checkpoint: Checkpoint) -> tuple[bool | None, bool | None]:
    """Whether tokenizer.json's TemplateProcessing puts a special token before / after a single text.

    transformers 5 saves tokenizer_config.json without add_bos_token/add_eos_token, and its tokenizer
    then adds exactly what the post-processor says; without this, llama.cpp would fall back to its own
    default (BOS on for SentencePiece models) where the original adds none."""
    processor = (checkpoint.json_file("tokenizer.json") or {}).get("post_processor")
    if not isinstance(processor, dict) or processor.get("type") != "TemplateProcessing":
        return None, None
    single = processor.get("single")
    if not isinstance(single, list) or not single:
        return None, None
    return _is_special_item(single[0]), _is_special_item(single[-1])


def _is_special_item(item: Any) -> bool:
    return isinstance(item, dict) and "SpecialToken" in item


def _resolve_role(value: Any, token_ids: dict[str, int]) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    return token_ids.get(value) if isinstance(value, str) else None


def end_of_generation_ids(checkpoint: Checkpoint, role_ids: dict[str, int], n_vocab: int) -> list[int]:
    """Every id that ends generation: generation_config.json's eos list, then eos and eot."""
    ids: list[int] = []
    generation = checkpoint.generation_config or {}
    listed = generation.get("eos_token_id", checkpoint.config.get("eos_token_id"))
    for token_id in listed if isinstance(listed, list) else [listed]:
        if isinstance(token_id, int) and 0 <= token_id < n_vocab and token_id not in ids:
            ids.append(token_id)
    for role in ("eos", "eot"):
        if role in role_ids and role_ids[role] not in ids:
            ids.append(role_ids[role])
    return ids


def _fill_eog_slots(tokens: SpecialTokens) -> None:
    """Put end ids the eos/eot slots don't already hold into the eom slot (one left)."""
    extra = [i for i in tokens.eog_ids if i not in (tokens.ids.get("eos"), tokens.ids.get("eot"))]
    if extra and "eom" not in tokens.ids:
        # llama.cpp treats the eom id as end-of-generation; Phi-3's <|assistant|> ends
        # generation in transformers (generation_config.json) and would otherwise run on.
        tokens.ids["eom"] = extra.pop(0)
    tokens.dropped_eog_ids = extra


def eog_metadata(tokens: SpecialTokens) -> Metadatum:
    return Metadatum(EOG_IDS_KEY, list(tokens.eog_ids), GGUFValueType.ARRAY, GGUFValueType.UINT32)


def chat_template(checkpoint: Checkpoint) -> str | list[dict[str, str]] | None:
    """The chat template, looked up where transformers looks: tokenizer_config.json first, then
    chat_template.jinja (Phi-4-mini-reasoning keeps it there), then chat_template.json."""
    config = checkpoint.json_file("tokenizer_config.json") or {}
    template = config.get("chat_template")
    if template is None:
        template = checkpoint.text_file("chat_template.jinja")
    if template is None:
        template = (checkpoint.json_file("chat_template.json") or {}).get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        for t in template
    ):
        return template
    raise PhiquantError(
        f"chat_template is neither a string nor a list of named templates: {json.dumps(template)[:80]}",
        path=checkpoint.path / "tokenizer_config.json",
    )


def chat_template_metadata(template: str | list[dict[str, str]] | None) -> list[Metadatum]:
    if template is None:
        return []
    if isinstance(template, str):
        return [Metadatum("tokenizer.chat_template", template, GGUFValueType.STRING)]
    items = []
    for entry in template:
        key = (
            "tokenizer.chat_template"
            if entry["name"] == "default"
            else f"tokenizer.chat_template.{entry['name']}"
        )
        items.append(Metadatum(key, entry["template"], GGUFValueType.STRING))
    return items


def strip_flag_metadata(tokens: list[AddedToken]) -> list[Metadatum]:
    """The ids of added tokens that swallow whitespace on their left/right (GGUF arrays cannot be
    empty, so an absent key means none)."""
    items = []
    for key, flag in ((LSTRIP_IDS_KEY, "lstrip"), (RSTRIP_IDS_KEY, "rstrip")):
        ids = [t.id for t in tokens if getattr(t, flag)]
        if ids:
            items.append(Metadatum(key, ids, GGUFValueType.ARRAY, GGUFValueType.UINT32))
    return items
