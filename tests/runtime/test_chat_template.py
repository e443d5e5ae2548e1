"""Chat templates render like transformers renders them, inside a sandbox with time and size bounds."""

from __future__ import annotations

import time

import pytest

from phiquant.errors import PhiquantError
from phiquant.runtime.chat_template import ChatTemplate

PHI35_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def test_phi35_template_renders_the_documented_prompt() -> None:
    template = ChatTemplate(PHI35_TEMPLATE, origin="phi35", eos_token="<|endoftext|>")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert template.render(messages) == "<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert template.render(messages, add_generation_prompt=False).endswith("<|end|>\n<|endoftext|>")


def test_template_renders_like_transformers(tmp_path) -> None:
    jinja_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = [
        {"role": "user", "content": "a\n  b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    source = (
        "{%- for m in messages %}\n  {{- '<|im_start|>' + m['role'] + '<|im_sep|>' + m['content'] | trim + '<|im_end|>' }}\n"
        "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}{{ messages | tojson }}"
    )
    expected = jinja_utils.render_jinja_template(
        conversations=[messages], chat_template=source, add_generation_prompt=True
    )[0][0]
    assert ChatTemplate(source, origin="x").render(messages) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% set ns = namespace(__class__=1) %}",
        "{{ messages.append(1) }}",
    ],
)
def test_templates_reaching_python_internals_are_stopped(source: str) -> None:
    with pytest.raises(PhiquantError, match="unsafe|failed to render") as error:
        ChatTemplate(source, origin="evil.gguf").render([{"role": "user", "content": "x"}])
    assert "evil.gguf" in str(error.value)


def test_endless_template_is_stopped_within_its_time_bound() -> None:
    source = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(PhiquantError, match="longer than 0.5 s"):
        ChatTemplate(source, origin="slow.gguf", max_seconds=0.5).render([])
    assert time.monotonic() - started < 5


def test_huge_output_is_stopped() -> None:
    source = "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    with pytest.raises(PhiquantError, match="more than 100000 characters"):
        ChatTemplate(source, origin="big.gguf", max_output_chars=100_000).render([])


def test_syntax_error_names_the_file() -> None:
    with pytest.raises(PhiquantError, match="does not parse") as error:
        ChatTemplate("{% for %}", origin="broken.gguf")
    assert "broken.gguf" in str(error.value)
