"""A multi-turn conversation with a model: history, system prompt, and a KV cache kept between turns.

Each turn renders the whole history with the model's chat template (so the prompt is exactly what
the Hugging Face tokenizer would build), then evaluates only what the context does not hold yet:
the previous turns stay in the KV cache.  The first turn is therefore token for token what
`generate` and the server produce for the same prompt and seed; later turns reuse keys and values
computed in other batch shapes and can differ from a fresh evaluation in the last bits.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from phiquant.errors import PhiquantError
from phiquant.runtime.generate import Completion, SamplingOptions, generate
from phiquant.runtime.images import ImageInput
from phiquant.runtime.llama import Context
from phiquant.runtime.reply_parser import MARKERS
from phiquant.runtime.vision import MediaPrompt

if TYPE_CHECKING:  # the runner imports this module to open chat sessions
    from phiquant.runtime.runner import ModelRunner


@dataclass
class ChatSession:
    runner: ModelRunner
    options: SamplingOptions
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    last: Completion | None = None
    images: list[ImageInput] = field(default_factory=list)  # shown before the first user message
    _context: Context | None = field(default=None, repr=False)

    def messages(self, user_text: str | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        user = [{"role": "user", "content": user_text}] if user_text is not None else []
        return system + self.history + user

    def _image_prompt(self, user_text: str) -> MediaPrompt:
        """The conversation with one image marker per image at the start of the first user message
        (each turn is evaluated whole: image positions hold no token ids to match a prefix on)."""
        vision = self.runner.vision()
        messages = self.messages(user_text)
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        markers = f"{vision.marker}\n" * len(self.images)
        messages[first] = {**messages[first], "content": markers + messages[first]["content"]}
        return vision.build_prompt(self.runner.prompt.render(messages), self.images, self.runner.text_tokens)

    def reply(self, user_text: str, *, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream the answer to `user_text`; the turn joins the history when the answer ends (also
        when it is cancelled: the history holds what the user saw)."""
        prompt = self._image_prompt(user_text) if self.images else None
        tokens = prompt.positions if prompt else self.runner.chat_tokens(self.messages(user_text))
        n_ctx = self.runner.n_ctx
        if len(tokens) >= n_ctx:
            if prompt:
                prompt.close()
            raise PhiquantError(
                f"the conversation has {len(tokens)} tokens and the context holds {n_ctx}: "
                "/reset to start over, or restart with a larger --ctx"
            )
        options = dataclasses.replace(
            self.options,
            max_tokens=min(self.options.max_tokens, n_ctx - len(tokens)),
            preserved_tokens=self.runner.prompt.single_token_ids(MARKERS),
        )
        completion = Completion()
        evaluate = (lambda context: self.runner.vision().evaluate(context, prompt)) if prompt else None
        try:
            yield from generate(
                self.context, tokens, options, self.runner.end_ids, cancel=cancel, completion=completion,
                reuse_prefix=True, evaluate=evaluate,
            )  # fmt: skip
        finally:
            if prompt:
                prompt.close()
            self.last = completion
            if completion.finish_reason:
                self.history += [
                    {"role": "user", "content": user_text},
                    {"role": "assistant", "content": completion.text},
                ]

    @property
    def context(self) -> Context:
        if self._context is None:
            self._context = self.runner.new_context()
        return self._context

    def reset(self) -> None:
        self.history = []
        if self._context is not None:
            self._context.clear()

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
