"""A small, independent evaluator of Go's text/template language: the subset Ollama's TEMPLATEs use.

Written from the text/template documentation (pkg.go.dev/text/template), not from phiquant's generator,
so rendering a Modelfile's TEMPLATE with it checks what Ollama would send to the model.  Supported:
text, `{{- ... -}}` trimming, comments, `.Field` / `$.Field` / `$var.Field` / `.`, string and integer
constants, parenthesised calls, `if` / `else if` / `else`, `range` (with `$i, $v :=` and `else`),
variable declarations and assignments, and the functions and/or/not/eq/ne/lt/le/gt/ge/len/slice/index/
print/printf.  Anything else raises, so a TEMPLATE outside the subset fails the test instead of passing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:\\.|[^"\\])*")|(?P<raw>`[^`]*`)|(?P<number>-?\d+)|(?P<op>:=|=|\(|\)|,|\|)'
    r"|(?P<word>[$.A-Za-z_][\w.$]*))"
)


class TemplateError(Exception):
    pass


@dataclass
class Node:
    kind: str  # text, print, if, range, set
    value: Any = None
    branches: list[tuple[list[str], list[Node]]] = field(default_factory=list)
    otherwise: list[Node] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)


def _tokens(source: str) -> list[str]:
    tokens, position = [], 0
    source = source.strip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            raise TemplateError(f"cannot read {source[position:]!r}")
        tokens.append(match.group(match.lastgroup or ""))
        position = match.end()
    return tokens


def parse(template: str) -> list[Node]:
    pieces: list[tuple[str, str]] = []
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        position = match.end()
        if match.group(3):
            rest = template[position:]
            position += len(rest) - len(rest.lstrip(" \t\r\n"))
    pieces.append(("text", template[position:]))
    nodes, _ = _parse_list(pieces, 0, top=True)
    return nodes


def _parse_list(pieces: list[tuple[str, str]], i: int, top: bool = False) -> tuple[list[Node], int]:
    nodes: list[Node] = []
    while i < len(pieces):
        kind, content = pieces[i]
        if kind == "text":
            if content:
                nodes.append(Node("text", content))
            i += 1
            continue
        words = content.strip()
        if words.startswith("/*"):
            i += 1
            continue
        head = words.split(None, 1)[0] if words else ""
        if head in ("end", "else"):
            if top:
                raise TemplateError(f"unexpected {{{{ {words} }}}}")
            return nodes, i
        if head == "if":
            node, i = _parse_if(pieces, i)
        elif head == "range":
            node, i = _parse_range(pieces, i)
        elif head in ("with", "template", "define", "block", "break", "continue"):
            raise TemplateError(f"{head} is outside the supported subset")
        else:
            node, i = Node("print", _tokens(words)), i + 1
            if len(node.value) >= 2 and node.value[1] in (":=", "="):
                node = Node("set", node.value[2:], variables=[node.value[0]])
        nodes.append(node)
    if not top:
        raise TemplateError("missing {{ end }}")
    return nodes, i


def _parse_if(pieces: list[tuple[str, str]], i: int) -> tuple[Node, int]:
    node = Node("if")
    condition = _tokens(pieces[i][1].strip()[2:])
    while True:
        body, i = _parse_list(pieces, i + 1)
        node.branches.append((condition, body))
        words = pieces[i][1].strip()
        if words == "end":
            return node, i + 1
        if words.startswith("else if "):
            condition = _tokens(words[len("else if ") :])
            continue
        if words == "else":
            node.otherwise, i = _parse_list(pieces, i + 1)
            if pieces[i][1].strip() != "end":
                raise TemplateError("else must be followed by end")
            return node, i + 1
        raise TemplateError(f"unexpected {{{{ {words} }}}}")


def _parse_range(pieces: list[tuple[str, str]], i: int) -> tuple[Node, int]:
    tokens = _tokens(pieces[i][1].strip()[5:])
    variables: list[str] = []
    if ":=" in tokens:
        split = tokens.index(":=")
        variables = [t for t in tokens[:split] if t != ","]
        tokens = tokens[split + 1 :]
    node = Node("range", tokens, variables=variables)
    body, i = _parse_list(pieces, i + 1)
    node.branches.append((tokens, body))
    words = pieces[i][1].strip()
    if words == "else":
        node.otherwise, i = _parse_list(pieces, i + 1)
        words = pieces[i][1].strip()
    if words != "end":
        raise TemplateError(f"unexpected {{{{ {words} }}}} in range")
    return node, i + 1


def truth(value: Any) -> bool:
    return not (
        value is None or value is False or value == 0 or (hasattr(value, "__len__") and len(value) == 0)
    )


def _field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name not in value:
            return None  # a missing map key is the zero value, as Go maps give
        return value[name]
    raise TemplateError(f"cannot take .{name} of {value!r}")


class Renderer:
    def __init__(self, data: Any):
        self.root = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f"undefined variable {name}")

    def operand(self, token: str, dot: Any) -> Any:
        if token.startswith('"'):
            return json.loads(token)
        if token.startswith("`"):
            return token[1:-1]
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token == ".":
            return dot
        if token.startswith("."):
            value, path = dot, token[1:].split(".")
        elif token.startswith("$"):
            name, _, rest = token.partition(".")
            value, path = self.lookup(name), rest.split(".") if rest else []
        else:
            raise TemplateError(f"unknown identifier {token}")
        for name in path:
            value = _field(value, name)
        return value

    def evaluate(self, tokens: list[str], dot: Any) -> Any:
        if "|" in tokens:
            raise TemplateError("pipelines with | are outside the supported subset")
        arguments, position = self._arguments(tokens, 0, dot)
        if position != len(tokens):
            raise TemplateError(f"unbalanced {tokens}")
        return arguments

    def _arguments(self, tokens: list[str], position: int, dot: Any) -> tuple[Any, int]:
        items: list[Any] = []
        function: str | None = None
        while position < len(tokens) and tokens[position] != ")":
            token = tokens[position]
            if token == "(":
                value, position = self._arguments(tokens, position + 1, dot)
                if position >= len(tokens) or tokens[position] != ")":
                    raise TemplateError("missing )")
                items.append(value)
                position += 1
            elif not items and function is None and token in FUNCTIONS:
                function = token
                position += 1
            else:
                items.append(self.operand(token, dot))
                position += 1
        if function is not None:
            return FUNCTIONS[function](*items), position
        if len(items) != 1:
            raise TemplateError(f"a command with {len(items)} operands and no function: {tokens}")
        return items[0], position

    def render(self, nodes: list[Node], dot: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.value)
            elif node.kind == "print":
                value = self.evaluate(node.value, dot)
                out.append("" if value is None else _go_print(value))
            elif node.kind == "set":
                name = node.variables[0]
                self.scopes[-1][name] = self.evaluate(node.value, dot)
            elif node.kind == "if":
                out.append(self._render_if(node, dot))
            elif node.kind == "range":
                out.append(self._render_range(node, dot))
        return "".join(out)

    def _scoped(self, nodes: list[Node], dot: Any, variables: dict[str, Any] | None = None) -> str:
        self.scopes.append(dict(variables or {}))
        try:
            return self.render(nodes, dot)
        finally:
            self.scopes.pop()

    def _render_if(self, node: Node, dot: Any) -> str:
        for condition, body in node.branches:
            if truth(self.evaluate(condition, dot)):
                return self._scoped(body, dot)
        return self._scoped(node.otherwise, dot)

    def _render_range(self, node: Node, dot: Any) -> str:
        items = self.evaluate(node.value, dot)
        if items is None or len(items) == 0:
            return self._scoped(node.otherwise, dot)
        pairs = items.items() if isinstance(items, dict) else enumerate(items)
        out = []
        for key, item in pairs:
            names = node.variables
            variables = {names[0]: item} if len(names) == 1 else dict(zip(names, (key, item)))
            out.append(self._scoped(node.branches[0][1], item, variables))
        return "".join(out)


def _go_print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    raise TemplateError(f"printing {type(value).__name__} is outside the supported subset")


def _and(*values: Any) -> Any:
    for value in values:
        if not truth(value):
            return value
    return values[-1]


def _or(*values: Any) -> Any:
    for value in values:
        if truth(value):
            return value
    return values[-1]


def _slice(value: Any, *indices: int) -> Any:
    if len(indices) == 1:
        return value[indices[0] :]
    if len(indices) == 2:
        return value[indices[0] : indices[1]]
    return value[:]


def _printf(form: str, *values: Any) -> str:
    remaining = list(values)
    return re.sub(r"%[sdv]", lambda _: _go_print(remaining.pop(0)), form)


FUNCTIONS: dict[str, Any] = {
    "and": _and,
    "or": _or,
    "not": lambda v: not truth(v),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "len": len,
    "slice": _slice,
    "index": lambda v, *keys: _index(v, keys),
    "print": lambda *v: "".join(map(_go_print, v)),
    "printf": _printf,
}


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value[key]
    return value


def render(template: str, data: Any) -> str:
    return Renderer(data).render(parse(template), data)


def ollama_messages(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The data Ollama passes its TEMPLATE: .Messages with .Role and .Content (and .System for the
    legacy form, the first system message's text)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages], "System": system}
