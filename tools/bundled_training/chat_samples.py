"""Question/answer conversations in the Phi-3.5 chat format, made from what the docs explain.

The bundled model answers `phiquant demo`'s chat prompt, and llama.cpp stops generating at `<|end|>`;
a model that never saw the format would ramble past it.  So part of the training text is conversations:
a question written from a template about something the docs explain, and the docs' own first paragraph
about it as the answer.  Every answer is corpus text; only the question wording is ours.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import jinja2

from .rst_document import Explanation
from .tokenizer_files import EOS_TOKEN, PHI35_CHAT_TEMPLATE

# {name}: qualified name ("os.path.join"), {short}: its last part ("join"), {signature}: with arguments.
QUESTIONS = {
    "function": [
        "What does `{name}()` do?",
        "What does the function {name} do?",
        "Explain `{signature}`.",
        "What is {short} in Python used for?",
        "How does `{name}()` work?",
    ],
    "method": [
        "What does `{name}()` do?",
        "What does the {short} method do?",
        "Explain `{signature}`.",
        "What is the {name} method for?",
    ],
    "decorator": ["What does the `@{name}` decorator do?", "Explain the {short} decorator."],
    "class": [
        "What is `{name}`?",
        "What is the {name} class?",
        "Explain the class `{signature}`.",
        "What is {short} in Python?",
    ],
    "exception": ["When is `{name}` raised?", "What is the {name} exception?", "What does {short} mean?"],
    "attribute": ["What is `{name}`?", "What does the attribute {name} hold?"],
    "data": ["What is `{name}`?", "What is {name} in Python?"],
    "term": [
        "What is {name}?",
        "What does {name} mean in Python?",
        "Define {name}.",
        "Can you explain what {name} is?",
    ],
    "section": ["Tell me about {name}.", "Can you explain {name}?", "What should I know about {name}?"],
}
OTHER_KIND_QUESTIONS = ["What is the {kind} `{name}`?", "Explain the {kind} {name}."]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant who knows Python well.",
    "Answer questions about Python clearly and briefly.",
    "You are an expert Python programmer. Answer the user's question.",
]
SYSTEM_PROMPT_SHARE = 0.25
SECOND_TURN_SHARE = 0.15

_TEMPLATE = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(PHI35_CHAT_TEMPLATE)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """What the Phi-3.5 chat template makes of `messages` (as transformers' apply_chat_template does)."""
    return _TEMPLATE.render(
        messages=messages, add_generation_prompt=add_generation_prompt, eos_token=EOS_TOKEN
    )


def question_for(explanation: Explanation, rng: random.Random) -> str:
    templates = QUESTIONS.get(explanation.kind, OTHER_KIND_QUESTIONS)
    name = explanation.subject
    return rng.choice(templates).format(
        name=name,
        short=name.rsplit(".", 1)[-1],
        signature=explanation.signature or name,
        kind=explanation.kind,
    )


def build_conversations(explanations: Iterable[Explanation], seed: int) -> list[str]:
    """One rendered conversation per explanation (some with a system prompt, some with a second turn)."""
    rng = random.Random(seed)
    pending = list(explanations)
    conversations = []
    while pending:
        explanation = pending.pop(0)
        messages = []
        if rng.random() < SYSTEM_PROMPT_SHARE:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        messages += _turn(explanation, rng)
        if pending and rng.random() < SECOND_TURN_SHARE:
            messages += _turn(pending.pop(0), rng)
        conversations.append(render_chat(messages))
    return conversations


def _turn(explanation: Explanation, rng: random.Random) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": question_for(explanation, rng)},
        {"role": "assistant", "content": explanation.answer},
    ]
