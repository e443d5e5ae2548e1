"""The pure parts of tools/train_bundled_model.py: markup rendering, LongRoPE factors, chat rendering."""

from __future__ import annotations

import pytest
from tools.bundled_training.chat_samples import render_chat
from tools.bundled_training.model_files import ModelShape, longrope_factors
from tools.bundled_training.rst_document import render_document
from tools.bundled_training.rst_inline import render_inline

from phiquant.bundled import DEFAULT_MODEL_DIR

FUNCTION_SOURCE = """\
:mod:`os.path` --- Common pathname manipulations
================================================

.. module:: os.path

.. function:: join(path, *paths)

   Join one or more path segments intelligently.  The return value is the
   concatenation of *path* and all members of *paths*, for example::

      >>> join("a", "b")
      'a/b'

   .. versionchanged:: 3.6
      Accepts a :term:`path-like object`.
"""


def test_sphinx_roles_render_as_a_reader_sees_them():
    text = ":func:`os.path.join`, ``None``, :meth:`~dict.get`, :pep:`8`, :ref:`tut-if`, `docs <https://x.y>`_"
    assert render_inline(text, {"tut-if": "if Statements"}) == (
        "`os.path.join()`, `None`, `get()`, PEP 8, if Statements, docs"
    )


def test_function_directive_becomes_signature_prose_and_fenced_code():
    document = render_document("library/os.path", FUNCTION_SOURCE, {})
    assert document.text == (
        "`os.path` — Common pathname manipulations\n\n"
        "os.path.join(path, *paths)\n\n"
        "Join one or more path segments intelligently.  The return value is the concatenation of *path* and "
        "all members of *paths*, for example:\n\n"
        '```python\n>>> join("a", "b")\n\'a/b\'\n```\n\n'
        "Changed in version 3.6: Accepts a path-like object.\n"
    )
    [explanation] = [item for item in document.explanations if item.kind == "function"]
    assert (explanation.subject, explanation.signature) == ("os.path.join", "os.path.join(path, *paths)")
    assert explanation.answer == "Join one or more path segments intelligently."


def test_literal_block_ends_with_the_list_item_that_introduced_it():
    source = "* Call it::\n\n     f()\n\n  Note that ``\\`` and :func:`g` work.\n"
    assert render_document("x", source, {}).text == (
        "* Call it:\n\n```python\nf()\n```\n\nNote that `\\` and `g()` work.\n"
    )


def test_longrope_factors_keep_fast_dimensions_and_stretch_slow_ones_by_the_extension():
    shape = ModelShape(original_context=512, max_context=4096)
    short, long = longrope_factors(shape)
    assert len(short) == len(long) == 32
    assert short == sorted(short) and long == sorted(long)
    assert short[0] == long[0] == 1.0 and long[-1] == 8.0 and 1.5 < short[-1] < 3.0
    assert all(long_factor >= short_factor for short_factor, long_factor in zip(short, long, strict=True))


def test_chat_rendering_matches_transformers_apply_chat_template():
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "A mutable sequence."},
    ]
    assert render_chat(messages) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert render_chat(messages[1:2], add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    )
