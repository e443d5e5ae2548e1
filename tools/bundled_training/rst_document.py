"""One Python-documentation source file (reStructuredText) turned into plain text plus what it explains.

This is deliberately not a full reStructuredText parser: it handles the constructs the CPython docs use
(sections, paragraphs, lists, literal blocks, tables and Sphinx directives) line by line, the way a reader
would see them rendered.  Prose paragraphs are joined into single lines (the sources wrap at 80 columns,
rendered text does not) and code becomes Markdown fenced blocks, so the model learns the shape of text
and code that chat answers use.

Alongside the text it records `Explanation`s: each documented function, class, glossary term or section
with the docs' own first paragraph about it.  `chat_samples.py` turns them into question/answer turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .rst_directives import (
    ADMONITIONS,
    CLASS_MEMBERS,
    CODE_DIRECTIVES,
    LANGUAGE_ALIASES,
    OTHER_OBJECTS,
    PYTHON_OBJECTS,
    SKIPPED_DIRECTIVES,
    VERSION_NOTES,
)
from .rst_inline import render_inline

EXPLICIT_MARKUP = re.compile(r"^\s*\.\.(\s|$)")
DIRECTIVE = re.compile(r"^\s*\.\.\s+(?P<name>[\w:-]+)::\s*(?P<argument>.*)$")
LABEL_TARGET = re.compile(r"^\.\.\s+_(?P<label>[^:`]+):\s*$")
ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:(\s.*)?$")
LIST_ITEM = re.compile(r"^([*+\-•]|\d+\.|#\.|\(?[a-zA-Z0-9]\))\s+")
SIMPLE_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")
GRID_TABLE_BORDER = re.compile(r"^\+[-=+]+\+\s*$")
SIGNATURE_NAME = re.compile(r"^\s*(?:(?:async|await|classmethod|staticmethod)\s+)?(?P<name>[\w.]+)")

LONGEST_ANSWER = 700
SHORTEST_ANSWER = 40


@dataclass(frozen=True)
class Explanation:
    """A thing the docs explain and their first words about it: the raw material of a chat turn."""

    kind: str  # "function", "class", "term", "section", "C function", ...
    subject: str  # "os.path.join", "iterable", "More Control Flow Tools"
    signature: str  # "os.path.join(path, *paths)"; "" when the subject has none
    answer: str


@dataclass
class PlainDocument:
    name: str  # path under _sources without ".rst.txt", e.g. "library/os.path"
    text: str
    explanations: list[Explanation] = field(default_factory=list)


def collect_label_titles(source: str) -> dict[str, str]:
    """`.. _label:` targets that sit on a section title -> that title, so `:ref:` shows real words."""
    lines = source.splitlines()
    titles: dict[str, str] = {}
    for index, line in enumerate(lines):
        target = LABEL_TARGET.match(line)
        if not target:
            continue
        following = index + 1
        while following < len(lines) and (
            not lines[following].strip() or LABEL_TARGET.match(lines[following])
        ):
            following += 1
        title_lines = _title_line_count(lines, following)
        if title_lines:
            raw_title = lines[following + 1] if title_lines == 3 else lines[following]
            titles[target["label"].strip().lower()] = render_inline(raw_title.strip(), {}).replace("`", "")
    return titles


def render_document(name: str, source: str, label_titles: dict[str, str]) -> PlainDocument:
    renderer = _Renderer(label_titles)
    lines = renderer.render(source.expandtabs(8).splitlines(), class_name="", top_level=True)
    return PlainDocument(name=name, text=_tidy(lines), explanations=renderer.explanations)


def _tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n"


class _Renderer:
    """Walks reStructuredText lines; directive bodies are rendered recursively after dedenting."""

    def __init__(self, label_titles: dict[str, str]) -> None:
        self.label_titles = label_titles
        self.highlight_language = "python"
        self.module = ""
        self.explanations: list[Explanation] = []
        self.pending_section = ""

    def render(self, lines: list[str], class_name: str, top_level: bool = False) -> list[str]:
        out: list[str] = []
        index = 0
        while index < len(lines):
            line = lines[index]
            if not line.strip():
                out.append("")
                index += 1
            elif EXPLICIT_MARKUP.match(line):
                end = _block_end(lines, index + 1, _indent(line))
                out += self._explicit_markup(line, _dedent(lines[index + 1 : end]), class_name)
                index = end
            elif title_lines := _title_line_count(lines, index):
                title = lines[index + 1] if title_lines == 3 else line
                out += [self._inline(title.strip()), ""]
                self.pending_section = self._inline(title.strip()) if top_level else ""
                index += title_lines
            elif ADORNMENT.match(line):
                index += 1  # a transition line
            else:
                end = _paragraph_end(lines, index)
                out += self._paragraph_and_literal(lines, index, end, top_level)
                index = (
                    _literal_block_end(lines, end, _text_column(lines[end - 1]))
                    if _ends_with_literal_marker(lines[end - 1])
                    else end
                )
        return out

    def _paragraph_and_literal(self, lines: list[str], start: int, end: int, top_level: bool) -> list[str]:
        paragraph = lines[start:end]
        if paragraph[0].lstrip().startswith(">>>"):
            return _fence(_dedent(paragraph), "python")
        if SIMPLE_TABLE_BORDER.match(paragraph[0].strip()) or GRID_TABLE_BORDER.match(paragraph[0].strip()):
            return [self._inline(row) for row in _table_rows(paragraph)]
        if not _ends_with_literal_marker(paragraph[-1]):
            return self._prose(paragraph, top_level)
        paragraph[-1] = _without_literal_marker(paragraph[-1])
        out = self._prose(paragraph, top_level) if any(line.strip() for line in paragraph) else []
        code = _dedent(lines[end : _literal_block_end(lines, end, _text_column(lines[end - 1]))])
        return out + [""] + _fence(code, self.highlight_language)

    def _prose(self, paragraph: list[str], top_level: bool) -> list[str]:
        logical_lines = [self._inline(line) for line in _join_wrapped_lines(paragraph)]
        if top_level and self.pending_section:
            self._explain("section", self.pending_section, "", logical_lines)
            self.pending_section = ""
        return logical_lines

    def _inline(self, text: str) -> str:
        return render_inline(text, self.label_titles).replace(" --- ", " — ")

    def _explicit_markup(self, line: str, block: list[str], class_name: str) -> list[str]:
        directive = DIRECTIVE.match(line)
        if not directive:
            return []  # comments, link targets, footnotes, substitution definitions
        name, argument = directive["name"], directive["argument"].strip()
        header, body = _split_directive_block(block)
        if name in PYTHON_OBJECTS:
            return self._python_object(name, [argument, *header], body, class_name)
        if name in OTHER_OBJECTS:
            return self._other_object(name, [argument, *header], body, class_name)
        if name == "glossary":
            return self._glossary(body)
        return self._plain_directive(name, argument, header, body, class_name)

    def _plain_directive(
        self, name: str, argument: str, header: list[str], body: list[str], class_name: str
    ) -> list[str]:
        if name in ADMONITIONS:
            content = self.render([argument, *header, "", *body], class_name)
            return _prefix_first_line(f"{ADMONITIONS[name]}:", content)
        if name in VERSION_NOTES:
            return self._version_note(name, argument, header, body, class_name)
        if name in CODE_DIRECTIVES:
            language = CODE_DIRECTIVES[name]
            return _fence(body, argument if language is None else language)
        if name in ("module", "currentmodule"):
            self.module = "" if argument == "None" else argument
            return []
        if name == "highlight":
            self.highlight_language = argument
            return []
        if name == "availability":
            return [f"Availability: {self._inline(argument)}.".replace("..", "."), ""]
        if name == "rubric":
            return [self._inline(argument), ""]
        if name in SKIPPED_DIRECTIVES:
            return []
        # topic, sidebar, only, epigraph, admonition and anything unknown: a reader sees the content.
        return self.render([argument, *header, "", *body], class_name)

    def _version_note(
        self, name: str, argument: str, header: list[str], body: list[str], class_name: str
    ) -> list[str]:
        """ "New in version 3.2." or "Changed in version 3.2: <what changed>"."""
        versions = argument.split()
        note = VERSION_NOTES[name].format(*versions, "", "")
        first_text_word = 2 if name == "deprecated-removed" else 1
        explanation = self.render([" ".join(versions[first_text_word:]), *header, "", *body], class_name)
        if any(line.strip() for line in explanation):
            return _prefix_first_line(note[:-1] + ":", explanation)
        return [note, ""]

    def _python_object(self, name: str, signatures: list[str], body: list[str], class_name: str) -> list[str]:
        kind = PYTHON_OBJECTS[name]
        qualified = [self._qualified_signature(signature, kind, class_name) for signature in signatures]
        subject = SIGNATURE_NAME.match(qualified[0])
        member_class = (
            subject["name"].rsplit(".", 1)[-1] if kind in ("class", "exception") and subject else class_name
        )
        content = self.render(body, member_class)
        if subject:
            self._explain(kind, subject["name"], qualified[0], content)
        return [*qualified, "", *content]

    def _other_object(self, name: str, signatures: list[str], body: list[str], class_name: str) -> list[str]:
        signatures = [signature.replace("\\", "") for signature in signatures]
        content = self.render(body, class_name)
        if OTHER_OBJECTS[name]:
            subject = re.match(r"^(?:[\w\s*]*?\s)?\**(?P<name>[\w.-]+)\s*(\(|$)", signatures[0])
            name_text = subject["name"] if subject else signatures[0]
            self._explain(OTHER_OBJECTS[name], name_text, signatures[0], content)
        return [*signatures, "", *content]

    def _qualified_signature(self, signature: str, kind: str, class_name: str) -> str:
        signature = signature.replace("\\\\", "\\")
        match = SIGNATURE_NAME.match(signature)
        if not match or "." in match["name"]:
            return signature.strip()
        if kind in CLASS_MEMBERS and class_name:
            prefix = f"{class_name}."
        elif kind not in CLASS_MEMBERS and self.module and self.module != "builtins":
            prefix = f"{self.module}."
        else:
            prefix = ""
        return (
            signature[: match.start("name")].strip()
            + (" " if match.start("name") else "")
            + prefix
            + signature[match.start("name") :].strip()
        )

    def _glossary(self, body: list[str]) -> list[str]:
        out: list[str] = []
        index = 0
        while index < len(body):
            if not body[index].strip():
                index += 1
                continue
            terms = []
            while index < len(body) and body[index].strip() and _indent(body[index]) == 0:
                terms.append(self._inline(body[index].strip()))
                index += 1
            end = _block_end(body, index, 0)
            definition = self.render(_dedent(body[index:end]), "")
            for term in terms:
                self._explain("term", term, "", definition)
            out += [*terms, *definition, ""]
            index = end
        return out

    def _explain(self, kind: str, subject: str, signature: str, content: list[str]) -> None:
        answer = _first_prose(content)
        if answer:
            self.explanations.append(Explanation(kind, subject.strip(), signature, answer))


def _first_prose(content: list[str]) -> str:
    """The first paragraph that is prose (not code, not a version note), two if the first is short."""
    paragraphs: list[str] = []
    in_code = False
    for line in content:
        if line.startswith("```"):
            in_code = not in_code
            if paragraphs:
                break
            continue
        if in_code or not line.strip():
            if paragraphs and not in_code and sum(map(len, paragraphs)) >= 120:
                break
            continue
        if re.match(r"^(New in version|Changed in version|Deprecated since|Availability:|See also:)", line):
            break
        paragraphs.append(line.strip())
    return _shorten_to_sentence(" ".join(paragraphs))


def _shorten_to_sentence(text: str) -> str:
    """At most LONGEST_ANSWER characters ending on a full sentence (not on the colon before an example)."""
    if len(text) <= LONGEST_ANSWER and not text.endswith(":"):
        return text if len(text) >= SHORTEST_ANSWER else ""
    limit = min(len(text), LONGEST_ANSWER)
    cut = max(text.rfind(". ", 0, limit), text.rfind(".) ", 0, limit))
    return text[: cut + 1] if cut >= SHORTEST_ANSWER else ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _text_column(line: str) -> int:
    """Where the text of a line starts: after the bullet or number of a list item.

    A literal block belongs to the paragraph whose line ends in "::", so it ends at the first line
    indented no deeper than that paragraph's text (a list item's text, a definition's body)."""
    item = LIST_ITEM.match(line.strip())
    return _indent(line) + (len(item.group(0)) if item else 0)


def _dedent(lines: list[str]) -> list[str]:
    indents = [_indent(line) for line in lines if line.strip()]
    margin = min(indents, default=0)
    return [line[margin:] if line.strip() else "" for line in lines]


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """End of the block that follows a line at `indent`: blank lines and lines indented deeper."""
    end = start
    for index in range(start, len(lines)):
        if lines[index].strip() and _indent(lines[index]) <= indent:
            break
        if lines[index].strip():
            end = index + 1
    return end


def _paragraph_end(lines: list[str], start: int) -> int:
    end = start + 1
    while end < len(lines) and lines[end].strip() and not EXPLICIT_MARKUP.match(lines[end]):
        if _ends_with_literal_marker(lines[end - 1]):
            break
        end += 1
    return end


def _ends_with_literal_marker(line: str) -> bool:
    return line.rstrip().endswith("::") and not DIRECTIVE.match(line)


def _without_literal_marker(line: str) -> str:
    # rst: "text::" shows "text:", "text ::" and a lone "::" show nothing of the marker.
    stripped = line.rstrip()[:-2]
    return stripped.rstrip() if stripped.endswith(" ") or not stripped.strip() else stripped + ":"


def _literal_block_end(lines: list[str], start: int, paragraph_indent: int) -> int:
    first = start
    while first < len(lines) and not lines[first].strip():
        first += 1
    if first >= len(lines) or _indent(lines[first]) <= paragraph_indent:
        return start
    return _block_end(lines, first, paragraph_indent)


def _title_line_count(lines: list[str], index: int) -> int:
    """3 for an over- and underlined title at `index`, 2 for an underlined one, else 0."""
    line = lines[index] if index < len(lines) else ""
    following = lines[index + 1] if index + 1 < len(lines) else ""
    if ADORNMENT.match(line) and index + 2 < len(lines) and lines[index + 2].strip() == line.strip():
        return 3 if following.strip() else 0
    if line.strip() and not line.startswith(" ") and ADORNMENT.match(following) and not ADORNMENT.match(line):
        return 2 if len(following.strip()) >= min(len(line.strip()), 4) else 0
    return 0


def _join_wrapped_lines(paragraph: list[str]) -> list[str]:
    """Source lines -> logical lines: wrapped prose is joined, each list item or indented part starts anew."""
    logical: list[str] = []
    continuation_indent = -1
    for line in paragraph:
        text = line.strip()
        item = LIST_ITEM.match(text)
        if logical and not item and _indent(line) == continuation_indent:
            logical[-1] += " " + text
        else:
            logical.append(text)
            continuation_indent = _indent(line) + (len(item.group(0)) if item else 0)
    return logical


def _table_rows(paragraph: list[str]) -> list[str]:
    rows = []
    for line in paragraph:
        text = line.strip()
        if SIMPLE_TABLE_BORDER.match(text) or GRID_TABLE_BORDER.match(text) or ADORNMENT.match(text):
            continue
        if text.startswith("|") and text.endswith("|"):
            text = " | ".join(cell.strip() for cell in text.strip("|").split("|"))
        rows.append(re.sub(r"\s{3,}", "  ", text))
    return rows


def _split_directive_block(block: list[str]) -> tuple[list[str], list[str]]:
    """Lines before the first blank (more arguments, options) and the content after it."""
    header_end = next((index for index, line in enumerate(block) if not line.strip()), len(block))
    header = [line.strip() for line in block[:header_end] if not DIRECTIVE_OPTION.match(line.strip())]
    return header, _dedent(block[header_end:])


def _fence(code: list[str], language: str) -> list[str]:
    while code and not code[-1].strip():
        code = code[:-1]
    while code and not code[0].strip():
        code = code[1:]
    if not code:
        return []
    language = LANGUAGE_ALIASES.get(language.strip(), language.strip())
    return [f"```{language}", *code, "```", ""]


def _prefix_first_line(prefix: str, content: list[str]) -> list[str]:
    for index, line in enumerate(content):
        if line.strip():
            return [*content[:index], f"{prefix} {line}", *content[index + 1 :]]
    return content
