"""Images into a language model's context through libmtmd (llama-cpp-python's `llama_cpp.mtmd_cpp`).

The mmproj file is checked against the model before libmtmd sees it (a projector made for another model
would feed embeddings of the wrong width).  A prompt is text with one marker per image; each text part is
tokenized by phiquant's prompt tokenizer (the one text-only prompts use, so the same text gives the same
ids, and each side of an image is tokenized on its own, as the model's processor does), and each image
becomes one libmtmd chunk: resized within the projector's pixel limits, encoded by the vision tower, and
decoded into the KV cache at the marker's position.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np
from llama_cpp import mtmd_cpp as mt

from phiquant.archs.phi4v import IMAGE_MARKER as PHI4_IMAGE_MARKER
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.runtime import llama
from phiquant.runtime.images import ImageInput
from phiquant.runtime.llama import Context, LoadedModel

# llama.cpp calls back into Python (its log, the eval callback) from inside these C calls; a Ctrl-C
# handler raising there would be swallowed by ctypes ("Exception ignored") and the interrupt lost, or
# leave llama.cpp mid-graph.  The calls run with SIGINT/SIGTERM held and the signal acts when they return.
from phiquant.temporary_files import signals_held

IMAGE_POSITION = -1  # what Context.tokens records for a position holding image features
# clip.projector_type -> the marker the model's chat format puts where an image goes
MARKERS = {"phi4": PHI4_IMAGE_MARKER}
MTMD_INPUT_CHUNK_TYPE_IMAGE = 1


@dataclass
class ImageChunk:
    """One image as libmtmd holds it (owned: freed with the prompt)."""

    chunks: mt.mtmd_input_chunks_p | None
    chunk: mt.mtmd_input_chunk_p
    n_tokens: int
    n_pos: int
    origin: str

    def close(self) -> None:
        if self.chunks:
            mt.mtmd_input_chunks_free(self.chunks)
            self.chunks = None


@dataclass
class MediaPrompt:
    """Text token runs and images, in order; `positions` is what the context will hold."""

    segments: list[list[int] | ImageChunk] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        out: list[int] = []
        for segment in self.segments:
            out += segment if isinstance(segment, list) else [IMAGE_POSITION] * segment.n_pos
        return out

    @property
    def images(self) -> list[ImageChunk]:
        return [s for s in self.segments if isinstance(s, ImageChunk)]

    def close(self) -> None:
        for image in self.images:
            image.close()


@dataclass(frozen=True)
class ProjectorInfo:
    projector_type: str
    projection_dim: int
    marker: str


def read_projector_info(mmproj: Path, n_embd: int) -> ProjectorInfo:
    """What the mmproj file is, refused unless it is a vision projector for a model of this width."""
    gguf = read_gguf(mmproj)
    arch = gguf.get("general.architecture")
    if arch != "clip":
        raise PhiquantError(
            f"not a vision projector (mmproj) file: its architecture is {arch!r}, not 'clip'", path=mmproj
        )
    if not gguf.get("clip.has_vision_encoder"):
        raise PhiquantError("this mmproj file has no vision encoder", path=mmproj)
    projector_type = str(gguf.get("clip.projector_type", ""))
    width = gguf.get("clip.vision.projection_dim")
    if width != n_embd:
        raise PhiquantError(
            f"this mmproj belongs to another model: it projects images to {width} values per token, the "
            f"model embeds tokens in {n_embd}",
            path=mmproj,
        )
    return ProjectorInfo(
        projector_type, int(width), MARKERS.get(projector_type, mt.mtmd_default_marker().decode())
    )


class VisionProjector:
    """A libmtmd context over a loaded language model; close() frees it."""

    def __init__(self, mmproj: str | Path, model: LoadedModel, *, threads: int):
        self.path = Path(mmproj)
        self.model = model
        self.info = read_projector_info(self.path, int(lc.llama_model_n_embd(model._model)))
        # libmtmd logs through its own hooks: routed where llama.cpp's log goes (quiet by default)
        llama.ensure_backend()
        mt.mtmd_log_set(llama._log_callback, ctypes.c_void_p(0))
        mt.mtmd_helper_log_set(llama._log_callback, ctypes.c_void_p(0))
        params = mt.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        self._marker = self.info.marker.encode()
        params.media_marker = self._marker
        self._lock = threading.Lock()  # one libmtmd context: server slots encode their images in turn
        with signals_held():
            self._ctx = mt.mtmd_init_from_file(str(self.path).encode(), model._model, params)
        if not self._ctx:
            raise PhiquantError("libmtmd could not load this mmproj file", path=self.path)
        if not mt.mtmd_support_vision(self._ctx):
            self.close()
            raise PhiquantError("this mmproj file has no vision support", path=self.path)

    @property
    def marker(self) -> str:
        return self.info.marker

    def close(self) -> None:
        if self._ctx:
            mt.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> VisionProjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image_chunk(self, image: ImageInput) -> ImageChunk:
        """libmtmd's chunk for one image (resized within the projector's pixel limits)."""
        pixels = (ctypes.c_ubyte * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mt.mtmd_bitmap_init(image.width, image.height, pixels)
        if not bitmap:
            raise PhiquantError(f"{image.origin}: libmtmd could not take the image")
        chunks = mt.mtmd_input_chunks_init()
        try:
            text = mt.mtmd_input_text()
            text.text, text.text_len = self._marker, len(self._marker)
            text.add_special, text.parse_special = False, False
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            status = mt.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1)
            if status != 0:
                raise PhiquantError(
                    f"{image.origin}: libmtmd could not preprocess the image (status {status})"
                )
            found = [
                mt.mtmd_input_chunks_get(chunks, i)
                for i in range(mt.mtmd_input_chunks_size(chunks))
                if mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(chunks, i))
                == MTMD_INPUT_CHUNK_TYPE_IMAGE
            ]
            if len(found) != 1:
                raise PhiquantError(f"{image.origin}: libmtmd made {len(found)} image chunks, expected 1")
            chunk = found[0]
            result = ImageChunk(
                chunks,
                chunk,
                int(mt.mtmd_input_chunk_get_n_tokens(chunk)),
                int(mt.mtmd_input_chunk_get_n_pos(chunk)),
                image.origin,
            )
            chunks = None
            return result
        finally:
            mt.mtmd_bitmap_free(bitmap)
            if chunks:
                mt.mtmd_input_chunks_free(chunks)

    def build_prompt(
        self, text: str, images: Sequence[ImageInput], tokenize: Callable[[str], list[int]]
    ) -> MediaPrompt:
        """Split `text` at the markers (one per image, in order) and tokenize each text part alone."""
        parts = text.split(self.marker)
        if len(parts) - 1 != len(images):
            raise PhiquantError(
                f"the prompt has {len(parts) - 1} image marker(s) {self.marker!r} for {len(images)} image(s)"
            )
        prompt = MediaPrompt()
        try:
            for index, part in enumerate(parts):
                if part:
                    prompt.segments.append(tokenize(part))
                if index < len(images):
                    prompt.segments.append(self.image_chunk(images[index]))
        except BaseException:
            prompt.close()
            raise
        return prompt

    def encode(self, image: ImageChunk) -> np.ndarray:
        """The projected features libmtmd computes for an image: (n_tokens, n_embd)."""
        with signals_held():
            status = mt.mtmd_encode_chunk(self._ctx, image.chunk)
        if status != 0:
            raise PhiquantError(f"{image.origin}: the vision encoder failed (status {status})")
        pointer = mt.mtmd_get_output_embd(self._ctx)
        width = self.info.projection_dim
        features: np.ndarray = (
            np.ctypeslib.as_array(pointer, shape=(image.n_tokens * width,))
            .reshape(image.n_tokens, width)
            .copy()
        )
        return features

    def evaluate(self, context: Context, prompt: MediaPrompt) -> None:
        """Decode the whole prompt into an empty context; the last position's logits are then ready."""
        if context.n_past:
            context.clear()
        needed = len(prompt.positions)
        if needed >= context.n_ctx:
            raise PhiquantError(
                f"the prompt with its images takes {needed} positions; the context holds {context.n_ctx} "
                "(a larger --ctx, fewer or smaller images)"
            )
        last = len(prompt.segments) - 1
        for index, segment in enumerate(prompt.segments):
            if isinstance(segment, list):
                context.decode(segment)
                continue
            new_n_past = lc.llama_pos(0)
            with self._lock, signals_held():
                status = mt.mtmd_helper_eval_chunk_single(
                    self._ctx,
                    context._ctx,
                    segment.chunk,
                    context.n_past,
                    0,
                    context.n_batch,
                    index == last,
                    ctypes.byref(new_n_past),
                )
            if status != 0:
                raise PhiquantError(f"{segment.origin}: evaluating the image failed (status {status})")
            context.tokens.extend([IMAGE_POSITION] * (new_n_past.value - context.n_past))
