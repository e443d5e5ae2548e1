"""JSON-schema grammars: what llama-cpp-python's converter would not enforce is refused by name, and what
it does enforce becomes a grammar llama.cpp's parser accepts."""

from __future__ import annotations

import pytest

from phiquant.runtime.generate import check_grammar
from phiquant.runtime.json_grammar import (
    FunctionSpec,
    UnsupportedSchema,
    json_object_grammar,
    schema_grammar,
    tool_call_grammar,
    unsupported_features,
)
from phiquant.runtime.llama import LoadedModel, LoadOptions
from tests.fixtures.phi3_specs import PHI35_MINI

ENFORCED = {
    "type": "object",
    "title": "Cat",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 8, "description": "short"},
        "id": {"type": "string", "format": "uuid"},
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 3},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
        "either": {"type": ["string", "null"]},
        "fixed": {"const": 3},
        "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["kind", "name"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "maxLength": 4}},
}


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 0}, "minimum (at #)"),
        ({"type": "number", "multipleOf": 2}, "multipleOf (at #)"),
        ({"properties": {"a": {"not": {"type": "null"}}}}, "not (at #/properties/a)"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems (at #)"),
        ({"type": "string", "format": "email"}, "format 'email' (at #)"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf (at #)"),
        ({"allOf": [{"type": "object"}]}, "allOf (at #)"),
        ({"patternProperties": {"^x": {}}}, "patternProperties (at #)"),
        ({"type": "string", "maxLength": 10**9}, "maxLength above 1024 (at #)"),
        ({"type": "array", "minItems": 2}, "minItems/maxItems without items (at #)"),
        ({"maxLength": 3}, 'minLength/maxLength without "type": "string" (at #)'),
        ({"$ref": "https://example.com/schema.json"}, "$ref other than a local '#/...' reference (at #)"),
        ({"properties": {"a": True}}, "a bool instead of a schema object at #/properties/a"),
    ],
)
def test_what_the_converter_would_not_enforce_is_named(schema, named) -> None:
    assert named in unsupported_features(schema)
    with pytest.raises(UnsupportedSchema) as error:
        schema_grammar(schema)
    assert named in error.value.message


def test_a_pattern_the_converter_cannot_read_is_refused_not_crashed() -> None:
    with pytest.raises(UnsupportedSchema, match="Pattern must start"):
        schema_grammar({"type": "string", "pattern": "abc"})


@pytest.fixture(scope="module")
def vocabulary(converted_gguf):
    with LoadedModel(converted_gguf(PHI35_MINI, "f16"), LoadOptions(vocab_only=True)) as model:
        yield model


def test_enforced_schemas_become_grammars_llama_cpp_parses(vocabulary) -> None:
    assert unsupported_features(ENFORCED) == []
    grammar = schema_grammar(ENFORCED)
    # JSON strings never hold raw control characters (llama.cpp's rule, not llama-cpp-python's looser
    # one), nor code points that are not valid UTF-8 (surrogates, above U+10FFFF).
    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F\\uD800-\\uDFFF\\U00110000-\\U003FFFFF]' in grammar
    for text in (grammar, json_object_grammar()):
        check_grammar(vocabulary, text)


def test_tool_call_grammar_names_each_function_and_parses(vocabulary) -> None:
    functions = [
        FunctionSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
        FunctionSpec("get_time", {"type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]}}}),
    ]
    single = tool_call_grammar(functions, parallel=False)
    several = tool_call_grammar(functions, parallel=True)
    assert 'root ::= "<|tool_call|>[" space tool-call "]<|/tool_call|>"' in single
    assert '("," space tool-call)*' in several
    assert '"\\"get_weather\\""' in single and '"\\"get_time\\""' in single
    for grammar in (single, several):
        check_grammar(vocabulary, grammar)


def test_same_named_definitions_that_differ_across_tools_are_refused() -> None:
    functions = [
        FunctionSpec("a", {"$ref": "#/$defs/x", "$defs": {"x": {"properties": {"p": {"type": "string"}}}}}),
        FunctionSpec("b", {"$ref": "#/$defs/x", "$defs": {"x": {"properties": {"p": {"type": "integer"}}}}}),
    ]
    with pytest.raises(UnsupportedSchema, match="two different definitions named"):
        tool_call_grammar(functions, parallel=False)
