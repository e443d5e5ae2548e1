"""Inline reStructuredText markup of the Python documentation turned into plain, Markdown-flavoured text.

The Python docs are Sphinx sources: `:func:`os.path.join``, ``` ``None`` ```, `:pep:`8``, link targets.
The bundled model should learn the English a reader sees in the rendered docs, so roles become the text
Sphinx would show, and code-like roles become Markdown code spans (what chat answers use).
"""

from __future__ import annotations

import re

# Roles whose text is code: rendered as a Markdown code span.
CODE_ROLES = frozenset(
    """
    func meth class mod attr data exc const obj keyword option envvar program file samp opcode token
    command code mimetype mailheader makevar pdbcmd 2to3fixer monitoring-event c:func c:macro c:type
    c:member c:data c:var c:expr c:struct c:enum c:enumerator c:union py:func py:meth py:class
    py:mod py:attr py:data py:exc py:const py:obj
    """.split()  # noqa: SIM905 (a word table reads better than a list of strings)
)
# Sphinx appends "()" to these (its add_function_parentheses default).
CALLABLE_ROLES = frozenset({"func", "meth", "c:func", "py:func", "py:meth"})
SUBSTITUTIONS = {"version": "3.11", "release": "3.11.2", "today": ""}

ROLE_PATTERN = re.compile(r":(?P<role>[a-z0-9]+(?::[a-z0-9-]+)?):`(?P<body>(?:[^`\\]|\\.)+)`")
LITERAL_PATTERN = re.compile(r"``(?P<code>.+?)``(?!`)")
LINK_WITH_URL_PATTERN = re.compile(r"`(?P<text>[^`<]+?)\s*<[^`>]+>`__?")
LINK_REFERENCE_PATTERN = re.compile(r"`(?P<text>[^`]+)`__?(?=\W|$)")
FOOTNOTE_REFERENCE_PATTERN = re.compile(r"\s?\[(?:#[\w-]*|\d+|\*)\]_")
CODE_SPAN_PATTERN = re.compile(r"(`[^`]*`)")
SUBSTITUTION_PATTERN = re.compile(r"\|(?P<name>[\w-]+)\|")
EXPLICIT_TITLE_PATTERN = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)


def render_inline(text: str, label_titles: dict[str, str]) -> str:
    """Plain text for one line or paragraph of prose; `label_titles` resolves `:ref:` labels."""
    text = ROLE_PATTERN.sub(lambda match: _render_role(match["role"], match["body"], label_titles), text)
    text = LITERAL_PATTERN.sub(lambda match: f"`{match['code']}`", text)
    text = LINK_WITH_URL_PATTERN.sub(lambda match: match["text"], text)
    text = LINK_REFERENCE_PATTERN.sub(lambda match: match["text"], text)
    text = FOOTNOTE_REFERENCE_PATTERN.sub("", text)
    text = SUBSTITUTION_PATTERN.sub(lambda match: SUBSTITUTIONS.get(match["name"], match["name"]), text)
    # Backslashes escape markup in prose but are literal inside code spans (``\`` is one backslash).
    pieces = CODE_SPAN_PATTERN.split(text)
    return "".join(piece if index % 2 else _unescape(piece) for index, piece in enumerate(pieces))


def _unescape(prose: str) -> str:
    # rst's escaped space joins markup to the next word ("``x``\ s"); other escapes keep their character.
    return re.sub(r"\\(.)", r"\1", prose.replace("\\ ", ""))


def _render_role(role: str, body: str, label_titles: dict[str, str]) -> str:
    body = body.replace("\\", "")
    explicit = EXPLICIT_TITLE_PATTERN.match(body)
    title = explicit["title"] if explicit else None
    target = explicit["target"] if explicit else body
    if role == "pep":
        return title or f"PEP {target.split('#')[0]}"
    if role == "rfc":
        return title or f"RFC {target.split('#')[0]}"
    if role == "issue":
        return f"bpo-{target}"
    if role == "gh":
        return f"gh-{target}"
    if role == "ref":
        return title or label_titles.get(target.lower(), target.replace("-", " "))
    if role in CODE_ROLES:
        return f"`{title or _code_role_text(role, target)}`"
    return title or target


def _code_role_text(role: str, target: str) -> str:
    # "!" suppresses the cross-reference, "~" shows only the last dotted component.
    text = target.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    if role in CALLABLE_ROLES and not text.endswith(")"):
        text += "()"
    return text
