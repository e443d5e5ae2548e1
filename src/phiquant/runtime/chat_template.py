"""Rendering a model's chat template (Jinja, from the GGUF or the user) safely.

A template is code that came with a downloaded file.  It is rendered in Jinja's immutable sandbox
(no attribute access to Python internals, no mutation of passed-in objects, no file or network
access) with the same environment settings transformers uses (trim_blocks, lstrip_blocks, loop
controls, a JSON filter that does not escape HTML), so prompts match `apply_chat_template`.  Output
size and rendering time are bounded, so a template cannot hang or exhaust memory.  The time bound
works line by line, so the operators and calls that build a huge value in a single step (`'x' *
10**9`, `s ~ s` in a loop, `center(10**9)`, which Jinja would even fold at compile time) are bounded
by size as well.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from phiquant.errors import PhiquantError

MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_RENDER_SECONDS = 2.0


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for rendering prompts it is transparent."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """namespace() that refuses underscore names, so templates cannot reach dunder attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature trick
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


_MAX_POWER_BITS = 1 << 16  # `**` results above 65536 bits (about 20000 digits) are refused


def _too_big(what: str, size: float, limit: int, unit: str = "items") -> jinja2.exceptions.SecurityError:
    return jinja2.exceptions.SecurityError(f"{what} would hold about {size:.0f} {unit} (limit {limit})")


def _check_binop(operator: str, left: Any, right: Any, limit: int) -> None:
    sized = (str, list, tuple)
    if operator == "*":
        for value, times in ((left, right), (right, left)):
            if isinstance(value, sized) and isinstance(times, int) and len(value) * times > limit:
                raise _too_big("a repeated value", len(value) * times, limit)
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        if len(left) + len(right) > limit:
            raise _too_big("a concatenation", len(left) + len(right), limit)
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        bits = right * math.log2(abs(left)) if abs(left) > 1 else 0
        if bits > _MAX_POWER_BITS:
            raise _too_big("a power", bits, _MAX_POWER_BITS, "bits")


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    """No call a chat template makes needs a count or width in the millions (center, indent, ljust...)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
            raise jinja2.exceptions.SecurityError(f"an argument of {value} is too large (limit {limit})")


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to a size-checked join instead of Jinja's plain str_join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})
    code_generator_class = _BoundedCodeGenerator
    max_size = MAX_OUTPUT_CHARS

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right, self.max_size)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_arguments(args, kwargs, __self.max_size)
        return super().call(__context, __obj, *args, **kwargs)

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(part) for part in parts]
        size = sum(len(t) for t in texts)
        if size > self.max_size:
            raise _too_big("a `~` concatenation", size, self.max_size)
        return "".join(texts)


def _bounded_filter(function: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """Filters are called directly by compiled templates, not through the sandbox's call()."""

    @functools.wraps(function)  # keeps Jinja's pass_context/pass_eval_context markers
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs, limit)
        return function(*args, **kwargs)

    return bounded


def _environment(max_size: int = MAX_OUTPUT_CHARS) -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols], autoescape=False
    )
    env.max_size = max_size
    env.filters = {name: _bounded_filter(f, max_size) for name, f in env.filters.items()}
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _Namespace
    return env


class _Deadline:
    """Aborts template code that runs too long, through a trace function on the rendering thread
    (Jinja compiles templates to Python, so their loops are Python lines)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.events = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.events += 1
        if self.events % 256 == 0 and time.monotonic() > self.deadline:
            raise TimeoutError
        return self


class ChatTemplate:
    """A compiled chat template and the special-token strings it may refer to."""

    def __init__(
        self,
        source: str,
        *,
        origin: str,
        bos_token: str = "",
        eos_token: str = "",
        max_output_chars: int = MAX_OUTPUT_CHARS,
        max_seconds: float = MAX_RENDER_SECONDS,
    ):
        self.source = source
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_output_chars = max_output_chars
        self.max_seconds = max_seconds
        try:
            self._template = _environment(max_output_chars).from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise PhiquantError(
                f"chat template does not parse: {exc.message} (line {exc.lineno})", path=origin
            ) from None

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        context = {
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
        }
        deadline = _Deadline(self.max_seconds)
        pieces: list[str] = []
        size = 0
        previous = sys.gettrace()
        sys.settrace(deadline)
        try:
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > self.max_output_chars:
                    raise PhiquantError(
                        f"chat template produced more than {self.max_output_chars} characters; refusing",
                        path=self.origin,
                    )
                pieces.append(piece)
        except TimeoutError:
            raise PhiquantError(
                f"chat template took longer than {self.max_seconds:g} s to render; refusing", path=self.origin
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise PhiquantError(
                f"chat template tried something unsafe and was stopped: {exc}", path=self.origin
            ) from None
        except jinja2.exceptions.TemplateError as exc:
            raise PhiquantError(f"chat template failed to render: {exc}", path=self.origin) from None
        except (
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            AttributeError,
            ZeroDivisionError,
            RecursionError,
        ) as exc:
            raise PhiquantError(
                f"chat template failed to render: {type(exc).__name__}: {exc}", path=self.origin
            ) from None
        finally:
            sys.settrace(previous)
        return "".join(pieces)
