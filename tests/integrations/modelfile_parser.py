"""Reading a Modelfile as Ollama does (its repository's `ollama/docs/modelfile.md`): one instruction per
line, case-insensitive keywords, values quoted with "..." or triple quotes spanning lines, `#` comments."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_INSTRUCTION = re.compile(r"(?P<keyword>[A-Za-z]+)[ \t]+(?P<rest>.*)", re.DOTALL)


@dataclass
class ParsedModelfile:
    from_: str = ""
    template: str | None = None
    system: str | None = None
    license: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)

    def parameter(self, name: str) -> list[str]:
        return [value for key, value in self.parameters if key == name]


def _value(rest: str, text: str, position: int) -> tuple[str, int]:
    """The value starting at `rest` (text[position:]); returns it and where parsing continues."""
    if rest.startswith('"""'):
        end = text.index('"""', position + 3)
        return text[position + 3 : end], end + 3
    line_end = text.find("\n", position)
    line_end = len(text) if line_end < 0 else line_end
    line = text[position:line_end].rstrip()
    if line.startswith('"'):
        return json.loads(line), line_end
    return line, line_end


def parse_modelfile(text: str) -> ParsedModelfile:
    parsed = ParsedModelfile()
    position = 0
    while position < len(text):
        line_end = text.find("\n", position)
        line = text[position : len(text) if line_end < 0 else line_end]
        if not line.strip() or line.lstrip().startswith("#"):
            position = len(text) if line_end < 0 else line_end + 1
            continue
        match = _INSTRUCTION.match(text, position)
        if match is None:
            raise ValueError(f"not an instruction: {line!r}")
        keyword = match["keyword"].upper()
        start = match.start("rest")
        if keyword == "PARAMETER":
            name, _, _ = text[start:].partition(" ")
            value, position = _value(text[start + len(name) + 1 :], text, start + len(name) + 1)
            parsed.parameters.append((name, value))
        else:
            value, position = _value(text[start:], text, start)
            if keyword == "FROM":
                parsed.from_ = value
            elif keyword in ("TEMPLATE", "SYSTEM", "LICENSE"):
                setattr(parsed, keyword.lower(), value)
            else:
                raise ValueError(f"unexpected instruction {keyword}")
        position += 1
    return parsed
