"""Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) runs a byte-level BPE tokenizer's text splitting.

llama.cpp's converter recognises a BPE tokenizer by hashing the token ids of one probe string; any
vocabulary it has not seen (a fine-tune that added tokens, a re-trained vocabulary) fails with "BPE
pre-tokenizer was not recognized" (llama.cpp #7022, #7219), although the splitting itself is one llama.cpp
knows.  phiquant reads the splitting from tokenizer.json's own `pre_tokenizer` definition instead:
`KNOWN_PRE_TOKENIZERS` maps each split regex to the llama.cpp name that runs the same regex
(src/llama-vocab.cpp, llm_tokenizer_bpe).  Two cross-checks back the match: the tokenizer must split the
probe string exactly as the named regex does, and where the probe's token-id hash is one llama.cpp
knows (the original Microsoft vocabularies), it must name the same pre-tokenizer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError

# GPT-2's split regex, which tokenizers' ByteLevel(use_regex=true) applies (Phi-1, Phi-1.5, Phi-2).
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# cl100k_base's regex (Phi-4 14B).
CL100K_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# o200k_base's regex (Phi-4-mini, Phi-4-mini-reasoning, Phi-4-multimodal).
O200K_REGEX = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class KnownPreTokenizer:
    """A split regex llama.cpp implements, and the `tokenizer.ggml.pre` name that selects it."""

    llama_cpp_name: str
    regex: str
    used_by: str
    # The token-id hash of llama.cpp's probe string for the original vocabulary (conversion/base.py).
    original_vocabulary_hash: str
    # Where llama.cpp's implementation of the regex splits differently from the original, if anywhere.
    llama_cpp_caveat: str | None = None


KNOWN_PRE_TOKENIZERS: tuple[KnownPreTokenizer, ...] = (
    # "phi-2" selects LLAMA_VOCAB_PRE_TYPE_GPT2, whose regex is GPT-2's (llama.cpp PR #9361).
    KnownPreTokenizer(
        "phi-2",
        GPT2_REGEX,
        "Phi-1, Phi-1.5, Phi-2 (CodeGen BPE)",
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
    ),
    # "dbrx" selects LLAMA_VOCAB_PRE_TYPE_DBRX: the llama3 regex, i.e. cl100k's with the case-insensitive
    # contractions spelt as character classes.  Phi-4 has no entry of its own in llama.cpp; its probe
    # hash is DBRX's (both are cl100k).
    KnownPreTokenizer(
        "dbrx",
        CL100K_REGEX,
        "Phi-4 (cl100k BPE)",
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
    ),
    # "gpt-4o" selects LLAMA_VOCAB_PRE_TYPE_GPT4O (llama.cpp PR #12108), with clean_spaces off.  Its
    # adapted regex spells o200k's letter classes as "(?=[\p{L}])([^a-z])" lookaheads, which leave out
    # \p{M}: a combining mark is split off the letter it follows.
    KnownPreTokenizer(
        "gpt-4o",
        O200K_REGEX,
        "Phi-4-mini (o200k BPE)",
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        llama_cpp_caveat=(
            "llama.cpp's gpt-4o pre-tokenizer splits combining marks (Devanagari and other Indic vowel signs, "
            "decomposed accents) off the letters they follow, where the original tokenizer keeps them "
            "together: text with combining marks tokenizes differently in llama.cpp"
        ),
    ),
)

# The probe string llama.cpp's converter encodes to fingerprint a BPE tokenizer (whitespace runs, emoji,
# digit runs, mixed scripts, contractions); reproduced as data so the hashes above can be recomputed.
LLAMA_CPP_PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


@dataclass(frozen=True)
class SplitDefinition:
    """A tokenizer.json pre_tokenizer reduced to what decides the split: the regexes applied in order,
    and whether a byte-level step follows."""

    regexes: tuple[str, ...]
    byte_level: bool
    description: str


def read_split_definition(pre_tokenizer: Any) -> SplitDefinition:
    """Reduce tokenizer.json's `pre_tokenizer` to its split regexes.

    A Split step counts when it keeps every piece it finds (behavior "Isolated", or "Removed" with
    invert, which keeps the matches and drops only what no alternative matched: nothing, for these
    regexes); any other step makes the definition one llama.cpp has no counterpart for.
    """
    steps = _flatten(pre_tokenizer)
    regexes: list[str] = []
    byte_level = False
    problems: list[str] = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            byte_level = True
            if step.get("add_prefix_space"):
                problems.append("ByteLevel adds a prefix space")
            if step.get("use_regex", True):
                regexes.append(GPT2_REGEX)
        elif kind == "Split" and _keeps_matches(step) and isinstance(_pattern(step).get("Regex"), str):
            regexes.append(step["pattern"]["Regex"])
        else:
            problems.append(_describe_step(step))
    description = " -> ".join(_describe_step(step) for step in steps) or "none"
    if problems:
        regexes.append("<unsupported: " + "; ".join(problems) + ">")
    return SplitDefinition(tuple(regexes), byte_level, description)


def _flatten(pre_tokenizer: Any) -> list[dict[str, Any]]:
    if pre_tokenizer is None:
        return []
    if not isinstance(pre_tokenizer, dict):
        return [{"type": repr(pre_tokenizer)}]
    if pre_tokenizer.get("type") == "Sequence":
        inners = pre_tokenizer.get("pretokenizers")
        if not isinstance(inners, list):
            return [{"type": f"Sequence of {inners!r}"}]
        return [step for inner in inners for step in _flatten(inner)]
    return [pre_tokenizer]


def _pattern(step: dict[str, Any]) -> dict[str, Any]:
    pattern = step.get("pattern")
    return pattern if isinstance(pattern, dict) else {}


def _keeps_matches(step: dict[str, Any]) -> bool:
    behavior, invert = str(step.get("behavior", "")).lower(), bool(step.get("invert", False))
    return (behavior == "isolated" and not invert) or (behavior == "removed" and invert)


def _describe_step(step: dict[str, Any]) -> str:
    kind = step.get("type", "?")
    if kind == "Split":
        pattern = _pattern(step)
        shown = pattern.get("Regex", pattern.get("String", "?"))
        return f"Split({shown!r}, {step.get('behavior')}, invert={step.get('invert', False)})"
    if kind == "ByteLevel":
        return f"ByteLevel(use_regex={step.get('use_regex', True)}, add_prefix_space={step.get('add_prefix_space')})"
    return str(kind)


def match_known_pre_tokenizer(definition: SplitDefinition) -> KnownPreTokenizer | None:
    if not definition.byte_level or len(definition.regexes) != 1:
        return None
    for known in KNOWN_PRE_TOKENIZERS:
        if definition.regexes[0] == known.regex:
            return known
    return None


def identify_pre_tokenizer(pre_tokenizer: Any, tokenizer: Any, tokenizer_file: Path) -> KnownPreTokenizer:
    """The llama.cpp pre-tokenizer that splits text like this tokenizer.json (`pre_tokenizer` is its
    definition, `tokenizer` the file loaded by the tokenizers library), or a clear refusal."""
    definition = read_split_definition(pre_tokenizer)
    known = match_known_pre_tokenizer(definition)
    if known is None:
        names = ", ".join(f"{k.llama_cpp_name} ({k.used_by})" for k in KNOWN_PRE_TOKENIZERS)
        raise PhiquantError(
            f"its pre_tokenizer is {definition.description}, a text splitting llama.cpp has no "
            f"pre-tokenizer for, so llama.cpp would tokenize differently; llama.cpp runs these: {names}",
            path=tokenizer_file,
        )
    _check_probe_splits(tokenizer, known, tokenizer_file)
    _check_probe_hash(tokenizer, known, tokenizer_file)
    return known


def load_tokenizer(tokenizer_file: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_file))
    # tokenizers reports every parse failure as a bare Exception; nothing else can be caught here.
    except Exception as exc:  # noqa: BLE001
        raise PhiquantError(f"the tokenizers library cannot read it: {exc}", path=tokenizer_file) from None


def reference_split(regex: str) -> Any:
    """A tokenizers pre-tokenizer that splits with `regex` and then maps bytes as GPT-2 does."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _check_probe_splits(tokenizer: Any, known: KnownPreTokenizer, tokenizer_file: Path) -> None:
    ours = [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(LLAMA_CPP_PROBE_TEXT)]
    theirs = [piece for piece, _ in reference_split(known.regex).pre_tokenize_str(LLAMA_CPP_PROBE_TEXT)]
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours + [""], theirs + [""])) if a != b)
        raise PhiquantError(
            f"its pre_tokenizer reads like llama.cpp's {known.llama_cpp_name!r} but splits llama.cpp's probe "
            f"text differently (piece {first}: {ours[first : first + 1]} vs {theirs[first : first + 1]})",
            path=tokenizer_file,
        )


def probe_hash(tokenizer: Any) -> str:
    """llama.cpp's fingerprint: sha256 of the printed list of the probe string's token ids."""
    ids = tokenizer.encode(LLAMA_CPP_PROBE_TEXT).ids
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


def _check_probe_hash(tokenizer: Any, known: KnownPreTokenizer, tokenizer_file: Path) -> None:
    by_hash = {k.original_vocabulary_hash: k for k in KNOWN_PRE_TOKENIZERS}
    hashed = by_hash.get(probe_hash(tokenizer))
    if hashed is not None and hashed is not known:
        raise PhiquantError(
            f"its pre_tokenizer definition reads as llama.cpp's {known.llama_cpp_name!r}, but its probe "
            f"hash is that of {hashed.llama_cpp_name!r} ({hashed.used_by}); the file is inconsistent",
            path=tokenizer_file,
        )
