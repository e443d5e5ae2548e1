"""Templates that would build a huge value in one step are stopped by size, before the memory goes.

The time bound of the sandbox works line by line; these are single operations (some of which Jinja
would even evaluate while compiling), so they need their own bound.
"""

from __future__ import annotations

import time

import pytest

from phiquant.errors import PhiquantError
from phiquant.runtime.chat_template import ChatTemplate

DOUBLING = "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s OP ns.s %}{% endfor %}{{ ns.s }}"
ONE_STEP_BOMBS = {
    "repeat-string": "{{ 'x' * 3000000000 }}",
    "repeat-list": "{{ [1] * 10 ** 9 }}",
    "power": "{{ 2 ** 100000000 }}",
    "tilde-doubling": DOUBLING.replace("OP", "~"),
    "plus-doubling": DOUBLING.replace("OP", "+"),
    "filter-width": "{{ 'x' | center(3000000000) }}",
    "method-width": "{{ 'x'.ljust(3000000000) }}",
}


@pytest.mark.parametrize("source", list(ONE_STEP_BOMBS.values()), ids=list(ONE_STEP_BOMBS))
def test_one_step_memory_bombs_are_refused_quickly(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(PhiquantError, match="unsafe") as error:
        ChatTemplate(source, origin="bomb.gguf").render([{"role": "user", "content": "x"}])
    assert "limit" in str(error.value) and "bomb.gguf" in str(error.value)
    assert time.monotonic() - started < 2


def test_ordinary_uses_of_the_bounded_operators_still_work() -> None:
    source = (
        "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 'a' ~ 1 ~ 'b' }} {{ [1] + [2] }} {{ 'x' | indent(4) }}"
        "{{ messages[0]['content'] | truncate(5) }} {{ '=' * 20 }}"
    )
    rendered = ChatTemplate(source, origin="ok").render([{"role": "user", "content": "hello world"}])
    assert rendered == "1024 ababab a1b [1, 2] x" + "he..." + " " + "=" * 20
