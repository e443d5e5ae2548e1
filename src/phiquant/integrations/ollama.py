"""An Ollama Modelfile for a GGUF: the chat template in Ollama's Go-template form, every end token as a
stop, and a context size that keeps LongRoPE models on their short-context factors.

Ollama does not run the GGUF's Jinja template: it renders the Modelfile's TEMPLATE (Go text/template
over `.Messages`, each with `.Role` and `.Content`) and tokenizes the result with llama.cpp, adding BOS
when the GGUF says so (tokenizer.ggml.add_bos_token).  Phi's templates wrap each message in text that
depends only on its role, plus an optional prefix and a generation prompt, so phiquant measures those
pieces by rendering the Jinja template on marker messages, checks that the pieces rebuild the Jinja
rendering of whole conversations exactly, and refuses (instead of writing a Modelfile that would
prompt the model wrongly) when they do not.  Without a stop line for `<|end|>` a Phi model run from a
bare GGUF goes on past its answer into a made-up next turn.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from phiquant import temporary_files
from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.gguf_io.merge import unsplit_path
from phiquant.inspection import end_of_generation_tokens
from phiquant.runtime.chat_template import ChatTemplate
from phiquant.runtime.memory import ModelShape, default_context_size

ROLES = ("system", "user", "assistant", "tool")
_MARKER = "PHIQUANTMARKER{}"
# Conversations the measured layout must reproduce exactly: the two-turn chat Ollama sends most,
# the same without a system prompt, an empty system prompt (Phi-3.5 drops it, Phi-3 keeps it).
_CHECK_CONVERSATIONS: tuple[tuple[tuple[str, str], ...], ...] = (
    (
        ("system", "You are terse."),
        ("user", "Hi there"),
        ("assistant", "Hello!\nHow can I help?"),
        ("user", "2+2?"),
    ),
    (("user", "Hi there"), ("assistant", "Hello!"), ("user", "Name a prime.")),
    (("system", ""), ("user", "Hi")),
)


@dataclass(frozen=True)
class RoleWrapper:
    before: str
    after: str
    skip_empty: bool = False  # an empty message of this role renders nothing


@dataclass(frozen=True)
class TurnLayout:
    """A chat template as prefix + one wrapper per role + a generation prompt."""

    prefix: str
    roles: Mapping[str, RoleWrapper]  # roles the template does not render are absent
    generation_prompt: str

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        parts = [self.prefix]
        for message in messages:
            wrapper = self.roles.get(message["role"])
            if wrapper is None or (wrapper.skip_empty and not message["content"]):
                continue
            parts += [wrapper.before, message["content"], wrapper.after]
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


@dataclass
class Modelfile:
    gguf: Path
    path: Path | None  # where it was written; None when only rendered
    text: str
    template: str
    stops: list[str]
    num_ctx: int
    dropped_prefix: str  # template text left to llama.cpp's own BOS ("" when none)
    merge_command: str | None = None  # a split model: the command making the one file FROM names


def measure_layout(template: ChatTemplate) -> TurnLayout:
    """The prefix, role wrappers and generation prompt of `template`, checked against whole chats."""
    empty = template.render([], add_generation_prompt=True)
    bos = template.bos_token
    prefix = bos if bos and empty.startswith(bos) else ""
    generation_prompt = empty[len(prefix) :]
    roles: dict[str, RoleWrapper] = {}
    for index, role in enumerate(ROLES):
        wrapper = _measure_role(template, role, _MARKER.format(index), prefix, generation_prompt)
        if wrapper is not None:
            roles[role] = wrapper
    layout = TurnLayout(prefix, roles, generation_prompt)
    for conversation in _CHECK_CONVERSATIONS:
        messages = [{"role": role, "content": content} for role, content in conversation]
        expected = template.render(messages, add_generation_prompt=True)
        if layout.render(messages) != expected:
            raise _not_per_message(template, f"a {len(messages)}-message chat renders differently")
    return layout


def _measure_role(
    template: ChatTemplate, role: str, marker: str, prefix: str, generation_prompt: str
) -> RoleWrapper | None:
    try:
        rendered = template.render([{"role": role, "content": marker}], add_generation_prompt=True)
    except PhiquantError:
        if role == "tool":  # a template may refuse roles it does not know; Ollama's tool turns then fail too
            return None
        raise
    if marker not in rendered:
        return None
    head, _, tail = rendered.partition(marker)
    if not head.startswith(prefix) or not tail.endswith(generation_prompt) or marker in tail:
        raise _not_per_message(template, f"a lone {role} message does not render as prefix + turn")
    before, after = head[len(prefix) :], tail[: len(tail) - len(generation_prompt)]
    rendered_empty = template.render([{"role": role, "content": ""}], add_generation_prompt=True)
    return RoleWrapper(before, after, skip_empty=rendered_empty == prefix + generation_prompt)


def _not_per_message(template: ChatTemplate, why: str) -> PhiquantError:
    return PhiquantError(
        f"the chat template does not map onto Ollama's per-message TEMPLATE ({why}); write the TEMPLATE "
        "by hand, or pass --chat-template with a simpler Jinja template",
        path=template.origin,
    )


def go_template(layout: TurnLayout, *, include_prefix: bool = True) -> str:
    """The layout as an Ollama TEMPLATE: Go text/template over .Messages, with no whitespace trimming
    so every newline of the wrappers is kept as written."""
    branches: list[str] = []
    for role, wrapper in layout.roles.items():
        turn = f"{_literal(wrapper.before)}{{{{ .Content }}}}{_literal(wrapper.after)}"
        if wrapper.skip_empty:
            turn = f"{{{{ if .Content }}}}{turn}{{{{ end }}}}"
        keyword = "if" if not branches else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{turn}')
    body = "".join(branches) + ("{{ end }}" if branches else "")
    generation = (
        f'{{{{ if and $last (ne .Role "assistant") }}}}{_literal(layout.generation_prompt)}{{{{ end }}}}'
        if layout.generation_prompt
        else ""
    )
    prefix = _literal(layout.prefix) if include_prefix else ""
    loop = "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    return f"{prefix}{loop if generation else '{{ range .Messages }}'}{body}{generation}{{{{ end }}}}"


def _literal(text: str) -> str:
    """Template text as written, or a Go string constant when it holds action delimiters."""
    if "{{" not in text and "}}" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'{{{{ "{escaped}" }}}}'


def stop_tokens(gguf: GGUFFile) -> list[str]:
    """The text of every end-of-generation token, as `phiquant inspect` lists them: llama.cpp's
    eos/eot/eom slots, phiquant's recorded generation_config list and llama.cpp's end-token texts."""
    texts: list[str] = []
    for token in end_of_generation_tokens(gguf):
        if token.text and token.text != "?" and token.text not in texts:
            texts.append(token.text)
    return texts


def build_modelfile(
    gguf_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    num_ctx: int | None = None,
    chat_template: str | None = None,
) -> Modelfile:
    """The Modelfile text for `gguf_path`; FROM is relative to `output`'s folder (or the current one)."""
    path = Path(gguf_path)
    gguf = read_gguf(path)
    source = chat_template if chat_template is not None else gguf.get("tokenizer.chat_template")
    if not isinstance(source, str) or not source:
        raise PhiquantError(
            "has no chat template (tokenizer.chat_template): base models have no chat format for Ollama",
            path=path,
        )
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    template = ChatTemplate(
        source,
        origin="--chat-template" if chat_template is not None else str(path),
        bos_token=_token(tokens, gguf.get("tokenizer.ggml.bos_token_id")),
        eos_token=_token(tokens, gguf.get("tokenizer.ggml.eos_token_id")),
    )
    layout = measure_layout(template)
    # llama.cpp (and so Ollama) adds BOS itself when the file asks for it; a BOS written by the
    # template as text would then appear twice.
    adds_bos = bool(gguf.get("tokenizer.ggml.add_bos_token"))
    drop_prefix = adds_bos and bool(layout.prefix) and layout.prefix == template.bos_token
    go = go_template(layout, include_prefix=not drop_prefix)
    stops = stop_tokens(gguf)
    context = num_ctx if num_ctx is not None else default_context_size(ModelShape.from_gguf(gguf))
    if context < 1:
        raise PhiquantError(f"--ctx must be at least 1, not {context}")
    base = Path(output).parent if output is not None else Path.cwd()
    merge = merge_command(gguf)
    source = merged_path(gguf) if merge else path
    text = modelfile_text(_from_path(source, base), go, stops, context, gguf.get("general.license"))
    if merge:
        alternative = llama_cpp_merge_command(gguf)
        text = (
            f"# Ollama reads one GGUF file: merge the shards first with\n# {merge}\n"
            f"# (or llama.cpp's {alternative}, which keeps split.* keys in the file)\n{text}"
        )
    return Modelfile(path, None, text, go, stops, context, layout.prefix if drop_prefix else "", merge)


def merged_path(gguf: GGUFFile) -> Path:
    """Where the merged file of a split model goes: the shards' name without -00001-of-0000N."""
    return unsplit_path(gguf.path)


def merge_command(gguf: GGUFFile) -> str | None:
    """For a split model, the command that joins the shards into the file phiquant writes unsplit
    (Ollama's `FROM` takes one file; it does not open the other shards as llama.cpp does)."""
    if not gguf.is_split:
        return None
    return f"phiquant merge {shlex.quote(str(gguf.path))} -o {shlex.quote(str(merged_path(gguf)))}"


def llama_cpp_merge_command(gguf: GGUFFile) -> str:
    """llama.cpp's own tool for the same join; its file keeps split.no, split.tensors.count and
    split.count = 0 (gguf-split.cpp, gguf_merge), which llama.cpp ignores."""
    return f"llama-gguf-split --merge {shlex.quote(str(gguf.path))} {shlex.quote(str(merged_path(gguf)))}"


def modelfile_text(from_path: str, template: str, stops: Sequence[str], num_ctx: int, license: object) -> str:
    if '"""' in template:
        raise PhiquantError('the chat template contains """, which a Modelfile cannot quote')
    lines = [f"FROM {from_path}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if isinstance(license, str) and license and '"""' not in license:
        lines.append(f'LICENSE """{license}"""')
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _from_path(gguf: Path, base: Path) -> str:
    relative = os.path.relpath(gguf.resolve(), base.resolve())
    return relative if relative.startswith((".", "/")) else f"./{relative}"


def _token(tokens: Sequence[str], token_id: object) -> str:
    return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else ""


def write_modelfile(modelfile: Modelfile, output: str | os.PathLike[str]) -> Modelfile:
    path = Path(output)
    try:
        temporary_files.write_text(path, modelfile.text)
    except OSError as error:
        raise PhiquantError(f"cannot write the Modelfile: {error.strerror}", path=path) from None
    modelfile.path = path
    return modelfile
