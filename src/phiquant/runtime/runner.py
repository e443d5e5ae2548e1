"""A model ready to generate: the file resolved, memory checked, layers placed, prompts tokenized.

`open_runner` is what `generate`, `chat` and `serve` share, so the same MODEL, --ctx and seed give
the same tokens through all three: one context size (which also picks LongRoPE's factor set), one
batch size, one prompt tokenizer.  Thread counts do not change llama.cpp's results (every output row
is computed by one thread), so server slots may split the threads between them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiquant.errors import PhiquantError
from phiquant.ggml import devices
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.progress import SILENT, Reporter
from phiquant.runtime import memory
from phiquant.runtime.llama import Context, LoadedModel
from phiquant.runtime.loader import load_model
from phiquant.runtime.model_files import ModelFile, gguf_model_file
from phiquant.runtime.prompt import PromptTokenizer
from phiquant.runtime.sampling import SamplingOptions

if TYPE_CHECKING:
    from phiquant.runtime.chat import ChatSession
    from phiquant.runtime.generate import Completion
    from phiquant.runtime.images import ImageInput
    from phiquant.runtime.vision import VisionProjector

AUTO = "auto"
# The user's message a new template is tried on at start-up, so a broken or hostile template fails
# before the first real request rather than in the middle of a session.
_PROBE_CONVERSATION = [{"role": "user", "content": "Hello"}]


@dataclass(frozen=True)
class RunnerOptions:
    n_ctx: int | None = None  # None: memory.default_context_size
    gpu_layers: int | str = AUTO  # a count, or "auto"
    threads: int | None = None  # per context; None: every CPU this process may use
    chat_template: str | None = None  # Jinja source that replaces the GGUF's template
    chat_template_origin: str = "--chat-template"  # what its errors name: the file it came from
    n_contexts: int = 1  # server slots; each holds its own KV cache
    # The batched server: above a LongRoPE model's original context, the slots hold the original
    # context each (short factors) and one extra sequence holds n_ctx (long factors).
    longrope_lanes: bool = False
    n_batch: int = 512
    mmproj: Path | None = None  # vision projector; None: the `*mmproj*.gguf` beside the model, if any


@dataclass(frozen=True)
class Placement:
    """Where the layers run: how many llama.cpp offloads (its n_gpu_layers) and why."""

    requested: int | str
    gpu_layers: int
    n_layer: int
    reason: str
    gpu_names: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.gpu_layers == 0:
            return f"all {self.n_layer} layers on the CPU ({self.reason})"
        blocks = min(self.gpu_layers - 1, self.n_layer)
        return (
            f"output layer and {blocks} of {self.n_layer} blocks on {', '.join(self.gpu_names) or 'GPU'} "
            f"({self.reason})"
        )


@dataclass
class ModelRunner:
    model: LoadedModel
    gguf: GGUFFile
    shape: memory.ModelShape
    prompt: PromptTokenizer
    n_ctx: int
    threads: int
    n_batch: int
    placement: Placement
    file: ModelFile
    warnings: list[str] = field(default_factory=list)
    mmproj: Path | None = None
    _vision: VisionProjector | None = field(default=None, repr=False)
    _vision_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        """The model's name as clients see it: the file (or directory) name without .gguf."""
        source = self.file.source
        return source.name[:-5] if source.name.endswith(".gguf") else source.name

    @property
    def end_ids(self) -> frozenset[int]:
        return self.prompt.end_ids

    def new_context(self, *, threads: int | None = None) -> Context:
        return self.model.new_context(self.n_ctx, n_batch=self.n_batch, n_threads=threads or self.threads)

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.prompt.chat_tokens(messages)

    def text_tokens(self, text: str) -> list[int]:
        return self.prompt.tokenize(text)

    def stream(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingOptions | None = None,
        *,
        completion: Completion | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Stream the text that follows `prompt` (text, tokenized as the Hugging Face tokenizer
        would, or token ids) in a fresh context; stops on the model's end-of-generation tokens, the
        stop strings, max_tokens or a full context.  Pass `completion` to get the counts and the
        finish reason."""
        from phiquant.runtime.generate import generate

        tokens = self.text_tokens(prompt) if isinstance(prompt, str) else list(prompt)
        sampling = sampling or SamplingOptions()
        room = self.n_ctx - len(tokens)
        if room > 0 and sampling.max_tokens > room:
            sampling = dataclasses.replace(sampling, max_tokens=room)
        context = self.new_context()
        try:
            yield from generate(context, tokens, sampling, self.end_ids, completion=completion, cancel=cancel)
        finally:
            context.close()

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions | None = None) -> Completion:
        """The whole completion of `prompt` (see `stream`)."""
        from phiquant.runtime.generate import Completion

        completion = Completion()
        for _ in self.stream(prompt, sampling, completion=completion):
            pass
        return completion

    def chat(
        self, messages: Sequence[Mapping[str, Any]], sampling: SamplingOptions | None = None
    ) -> Completion:
        """Answer a conversation (OpenAI-style role/content messages) with the model's chat template."""
        return self.generate(self.chat_tokens(messages), sampling)

    def chat_session(self, system: str | None = None, sampling: SamplingOptions | None = None) -> ChatSession:
        """A multi-turn conversation that keeps its history and KV cache between turns
        (`session.reply(text)` streams each answer)."""
        from phiquant.runtime.chat import ChatSession

        return ChatSession(self, sampling or SamplingOptions(), system=system)

    def vision(self) -> VisionProjector:
        """The libmtmd context for images, loaded on first use; a model without mmproj is refused."""
        from phiquant.runtime.vision import VisionProjector

        with self._vision_lock:
            if self._vision is None:
                if self.mmproj is None:
                    raise PhiquantError(
                        f"{self.name} has no vision projector, so it cannot read images: give --mmproj FILE "
                        "(convert writes <name>-mmproj-F16.gguf beside a vision model's GGUF)",
                        path=self.file.gguf,
                    )
                self._vision = VisionProjector(self.mmproj, self.model, threads=self.threads)
            return self._vision

    def stream_with_images(
        self,
        text: str,
        images: Sequence[ImageInput],
        sampling: SamplingOptions | None = None,
        *,
        completion: Completion | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """`stream` for a prompt whose text holds one image marker per image (runner.vision().marker)."""
        from phiquant.runtime.generate import generate

        vision = self.vision()
        prompt = vision.build_prompt(text, images, self.text_tokens)
        context = self.new_context()
        try:
            positions = prompt.positions
            sampling = sampling or SamplingOptions()
            room = self.n_ctx - len(positions)
            if room > 0 and sampling.max_tokens > room:
                sampling = dataclasses.replace(sampling, max_tokens=room)
            yield from generate(
                context,
                positions,
                sampling,
                self.end_ids,
                completion=completion,
                cancel=cancel,
                evaluate=lambda ctx: vision.evaluate(ctx, prompt),
            )
        finally:
            context.close()
            prompt.close()

    def close(self) -> None:
        if self._vision is not None:
            self._vision.close()
            self._vision = None
        self.model.close()

    def __enter__(self) -> ModelRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runner(
    model: ModelFile | str | Path, options: RunnerOptions = RunnerOptions(), *, reporter: Reporter = SILENT
) -> ModelRunner:
    file = model if isinstance(model, ModelFile) else gguf_model_file(model)
    gguf = read_gguf(file.gguf)
    shape = memory.ModelShape.from_gguf(gguf)
    n_ctx = options.n_ctx if options.n_ctx is not None else memory.default_context_size(shape)
    memory.check_context_size(shape, n_ctx)
    warnings = memory.context_warnings(shape, n_ctx)
    n_contexts = options.n_contexts
    original = shape.long_rope_original_context
    if options.longrope_lanes and warnings and original:
        warnings = []
        n_contexts = 1 + -(-options.n_contexts * original // n_ctx)  # in units of n_ctx, rounded up
    placement = place_layers(options.gpu_layers, shape, gguf, n_ctx, n_contexts, options.n_batch)
    if isinstance(placement.requested, int) and placement.requested > placement.gpu_layers:
        warnings.append(f"--gpu-layers {placement.requested}: {placement.describe()}")
    _check_host_memory(shape, n_ctx, n_contexts, placement)
    for warning in warnings:
        reporter.warn(warning)
    reporter.note(f"context {n_ctx} tokens; {placement.describe()}")
    loaded = load_model(file.gguf, n_gpu_layers=placement.gpu_layers)
    try:
        prompt = PromptTokenizer(
            loaded,
            gguf,
            template_override=options.chat_template,
            override_origin=options.chat_template_origin,
        )
        if prompt.template is not None:
            prompt.render(_PROBE_CONVERSATION)
    except PhiquantError:
        loaded.close()
        raise
    return ModelRunner(
        model=loaded,
        gguf=gguf,
        shape=shape,
        prompt=prompt,
        n_ctx=n_ctx,
        threads=options.threads or memory.default_thread_count(),
        n_batch=min(options.n_batch, memory.padded_context(n_ctx)),
        placement=placement,
        file=file,
        warnings=warnings,
        mmproj=_projector_file(options.mmproj, file.gguf),
    )


def _projector_file(requested: Path | None, model_file: Path) -> Path | None:
    if requested is not None:
        if not Path(requested).is_file():
            raise PhiquantError("no such mmproj file", path=requested)
        return Path(requested)
    from phiquant.gguf_io.mmproj_writer import find_mmproj

    return find_mmproj(model_file)


def parse_gpu_layers(text: str) -> int | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise PhiquantError(f"--gpu-layers takes a number or 'auto', not {text!r}") from None
    if value < 0:
        raise PhiquantError(f"--gpu-layers must be 0 or more, not {value}")
    return value


def place_layers(
    requested: int | str,
    shape: memory.ModelShape,
    gguf: GGUFFile,
    n_ctx: int,
    n_contexts: int,
    n_batch: int,
) -> Placement:
    """How many layers llama.cpp gets to offload: `auto` fits weights and KV cache in free GPU memory."""
    if requested == 0:
        return Placement(0, 0, shape.n_layer, "--gpu-layers 0")
    if not devices.supports_gpu_offload():
        return Placement(requested, 0, shape.n_layer, "this llama.cpp build has no GPU support")
    gpus = devices.gpu_devices()
    if not gpus:
        return Placement(requested, 0, shape.n_layer, "no GPU found")
    names = tuple(g.description or g.name for g in gpus)
    if requested != AUTO:
        return Placement(requested, min(int(requested), shape.n_layer + 1), shape.n_layer, "as asked", names)
    weights, output = memory.layer_weight_bytes(gguf, shape.n_layer)
    kv = [b * n_contexts for b in memory.kv_cache_bytes_per_layer(shape, n_ctx)]
    free = sum(g.free_bytes for g in gpus)
    reserve = memory.compute_reserve_bytes(shape, n_ctx, n_batch) * len(gpus)
    n = memory.plan_gpu_layers(weights, output, kv, free, reserve)
    reason = f"auto: {memory.format_memory(free)} free on the GPU"
    return Placement(AUTO, n, shape.n_layer, reason, names)


def _check_host_memory(shape: memory.ModelShape, n_ctx: int, n_contexts: int, placement: Placement) -> None:
    """The KV cache of the layers left on the CPU must fit in the memory still available."""
    cpu_blocks = shape.n_layer - max(0, min(placement.gpu_layers - 1, shape.n_layer))
    if cpu_blocks == 0:
        return
    cpu_shape = dataclasses.replace(shape, n_layer=cpu_blocks, n_head_kv=shape.n_head_kv[:cpu_blocks])
    memory.check_kv_cache_fits(
        cpu_shape, n_ctx, n_contexts=n_contexts, available=memory.available_memory_bytes()
    )
