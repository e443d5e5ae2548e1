"""Grammars that make llama.cpp's sampler emit valid JSON: for a JSON schema, any JSON object, or a tool call.

Schemas are converted by llama-cpp-python's own converter (llama_cpp.llama_grammar.SchemaConverter).  That
converter enforces only part of JSON Schema and passes over the rest in silence (`minimum`, `not`,
`uniqueItems`...), which would let output through that the schema forbids.  So every schema is checked
against the table of what the converter enforces first, and anything else is refused by name: a grammar
here is a guarantee, never a hint.  Sizes that would become grammar repetitions are bounded, so a
schema cannot make the grammar (or its parse in llama.cpp) huge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.runtime.reply_parser import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# What llama_cpp.llama_grammar.SchemaConverter.visit enforces (and the keywords that constrain nothing).
ENFORCED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "$ref", "$defs", "definitions", "pattern", "format", "minLength",
    "maxLength",
})  # fmt: skip
ANNOTATIONS = frozenset({
    "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly",
    "writeOnly",
})  # fmt: skip
# Formats the converter has rules for; any other format would be accepted as a plain string.
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)
# llama-cpp-python's `char` rule lets raw control characters into strings, which JSON forbids (a strict
# parser rejects them); llama.cpp's own converter (common/json-schema-to-grammar.cpp) excludes them.
# llama.cpp's grammar decodes UTF-8 without checking the range: byte tokens can spell surrogates
# (ED A0..BF xx) or code points above U+10FFFF (F4 90.., F5..FF leads), which it would count as one
# character each while they are invalid UTF-8 (four replacement characters in the text); excluded too.
STRICT_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U003FFFFF] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
)
MAX_REPETITIONS = 1024  # minItems/maxItems/minLength/maxLength above this are refused
MAX_GRAMMAR_CHARS = 1 << 20
MAX_DEPTH = 64


class UnsupportedSchema(PhiquantError):
    """A schema (or part of one) that the grammar cannot enforce; `features` names what."""

    def __init__(self, features: Sequence[str]):
        self.features = tuple(features)
        super().__init__(
            "JSON schema features that grammar-constrained output cannot enforce: " + ", ".join(self.features)
        )


def unsupported_features(schema: Any) -> list[str]:
    """Each keyword (with its JSON pointer) that the converter would not enforce; [] if all is enforced."""
    return list(dict.fromkeys(_walk(schema, "#", 0)))


def _walk(schema: Any, where: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        yield f"nesting deeper than {MAX_DEPTH} levels at {where}"
        return
    if not isinstance(schema, dict):
        yield f"a {type(schema).__name__} instead of a schema object at {where}"
        return
    for key in schema:
        if key not in ENFORCED_KEYWORDS and key not in ANNOTATIONS:
            yield f"{key} (at {where})"
    yield from _check_values(schema, where)
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            yield from _walk(sub, f"{where}/{key}/{name}", depth + 1)
    for key in ("anyOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key) or []):
            yield from _walk(sub, f"{where}/{key}/{i}", depth + 1)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{where}/items", depth + 1)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{where}/additionalProperties", depth + 1)


def _check_values(schema: dict[str, Any], where: str) -> Iterator[str]:
    kind = schema.get("type")
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        value = schema.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value > MAX_REPETITIONS
        ):
            yield f"{key} above {MAX_REPETITIONS} (at {where})"
    if ("minLength" in schema or "maxLength" in schema) and kind != "string":
        yield f'minLength/maxLength without "type": "string" (at {where})'
    if ("minItems" in schema or "maxItems" in schema) and "items" not in schema:
        yield f"minItems/maxItems without items (at {where})"
    if "items" in schema and "prefixItems" in schema:
        yield f"items together with prefixItems (at {where})"
    if "items" in schema and not isinstance(schema["items"], dict):
        yield f"items that is not a schema object (at {where})"
    if "required" in schema and "properties" not in schema:
        yield f"required without properties (at {where})"
    if "format" in schema and schema["format"] not in ENFORCED_FORMATS:
        yield f"format {schema['format']!r} (at {where})"
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        yield f"$ref other than a local '#/...' reference (at {where})"
    if isinstance(kind, list) and any(k in schema for k in ("properties", "items", "enum", "const")):
        yield f"a list of types combined with properties, items, enum or const (at {where})"


@dataclass
class _Rules:
    """Grammar rules gathered from several conversions, each name defined once."""

    rules: dict[str, str]

    def add(self, converter_rules: dict[str, str]) -> None:
        for name, body in converter_rules.items():
            if self.rules.setdefault(name, body) != body:
                raise UnsupportedSchema([f"two different definitions named {name!r} across the schemas"])

    def text(self) -> str:
        grammar = "\n".join(f"{name} ::= {body}" for name, body in sorted(self.rules.items()))
        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise UnsupportedSchema([f"a schema whose grammar exceeds {MAX_GRAMMAR_CHARS} characters"])
        return grammar


def _convert(schema: Any, name: str) -> tuple[str, dict[str, str]]:
    """(the rule name for `schema`, all the rules the conversion made)."""
    features = unsupported_features(schema)
    if features:
        raise UnsupportedSchema(features)
    from llama_cpp.llama_grammar import SchemaConverter

    # llama-cpp-python's converter has no annotations.
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]
    copy = json.loads(json.dumps(schema))  # the converter rewrites $ref values in place
    try:
        resolved = converter.resolve_refs(copy, "input")
        rule = converter.visit(resolved, name)  # type: ignore[no-untyped-call]
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise UnsupportedSchema([f"{type(error).__name__}: {error}"]) from None
    rules = dict(converter._rules)
    if "char" in rules:
        rules["char"] = STRICT_JSON_CHAR
    return rule, rules


def schema_grammar(schema: Any) -> str:
    """A GBNF grammar (root rule `root`) whose every sentence is JSON valid against `schema`."""
    rule, rules = _convert(schema, "")
    merged = _Rules({})
    merged.add(rules)
    if rule != "root":
        merged.add({"root": rule})
    return merged.text()


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's response_format json_object)."""
    return schema_grammar({"type": "object"})


@dataclass(frozen=True)
class FunctionSpec:
    name: str  # letters, digits, '_' and '-' (checked by the caller), so it needs no escaping
    parameters: dict[str, Any]


def tool_call_grammar(functions: Sequence[FunctionSpec], *, parallel: bool) -> str:
    """Phi-4-mini's tool-call block: <|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>,
    each call naming one of `functions` with arguments valid against its parameters schema."""
    merged = _Rules({})
    alternatives = []
    for index, function in enumerate(functions):
        args_rule, rules = _convert(function.parameters or {"type": "object"}, f"tool{index}-arguments")
        merged.add(rules)
        call_rule = f"tool{index}-call"
        merged.add({
            call_rule: f'"{{" space "\\"name\\"" space ":" space "\\"{function.name}\\"" space "," space '
            f'"\\"arguments\\"" space ":" space {args_rule} "}}" space'
        })  # fmt: skip
        alternatives.append(call_rule)
    merged.add({"tool-call": " | ".join(alternatives)})
    more = ' ("," space tool-call)*' if parallel else ""
    merged.add({"root": f'"{TOOL_CALL_OPEN}[" space tool-call{more} "]{TOOL_CALL_CLOSE}"'})
    return merged.text()
