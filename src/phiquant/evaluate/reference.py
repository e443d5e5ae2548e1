"""The reference's logits, computed once per (model, text, context) and cached on disk, exactly.

What is cached, and why: exact KL divergence needs the reference's whole distribution at every scored
token, 32064 floats (128 KiB) a token for Phi; a few thousand tokens would be gigabytes, and llama.cpp's
own cache (16-bit log-probabilities above max-16, perplexity.cpp) is both large and approximate.  But
logits are a linear function of the hidden state that enters the output layer: logits = W h (+ b).  So the
cache stores h (n_embd values a token: 256 for the bundled model, 3072 for Phi-3-mini, 10-125 times
smaller than the logits) and rebuilds the logits with ggml's own kernels (output_layer.py), which gives
llama.cpp's logits bit for bit.  Nothing is lost:
  * h is stored in the precision ggml multiplies it in: F16 for F16 output weights and BF16 for BF16
    (ggml rounds the activations to the weight's dot-product type first), F32 otherwise;
  * when the cache is made, the rebuilt logits of the first batch are compared with the logits llama.cpp
    returned and must be identical, so a model whose output layer is more than a matrix product (logit
    soft-capping, scales) is refused instead of cached wrongly.
Streamed, in bounded memory: the states are computed window by window as the evaluation reaches each
window (sequential evaluation visits only some windows, in a random order), written straight to a file
and read back a batch at a time, so memory holds one batch whatever the text's length.  The cache under
`<cache dir>/reference/` is two files keyed by the reference's content hash, the hash of the token ids
(the text as this vocabulary reads it), the window size, the llama.cpp version and the context settings:
`<key>.states`, every window of the text at a fixed offset (sparse: windows never computed take no disk),
and `<key>.json`, which windows it holds.  Any run on the same key reuses whichever windows are there.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from phiquant import temporary_files
from phiquant.cache import REFERENCE, sub_cache
from phiquant.errors import PhiquantError
from phiquant.evaluate.files import ModelFile, content_hash
from phiquant.evaluate.output_layer import OUTPUT_WEIGHT, TIED_WEIGHT, OutputLayer
from phiquant.evaluate.windows import WindowPlan
from phiquant.ggml.types import GGMLType
from phiquant.progress import Reporter
from phiquant.runtime.llama import Context, LoadedModel, LoadOptions

CACHE_FORMAT = 2
# Context settings every evaluation uses (llama.cpp's defaults, as llama-perplexity runs): they change
# the hidden states, so they are part of the key.
CONTEXT_SETTINGS = "kv=f16;flash_attn=auto;kv_unified=0"


@dataclass(frozen=True)
class ReferenceKey:
    model_hash: str
    tokens_hash: str
    ctx: int

    @property
    def digest(self) -> str:
        text = f"{CACHE_FORMAT}|{self.model_hash}|{self.tokens_hash}|{self.ctx}|{llama_cpp.__version__}"
        return hashlib.sha256(f"{text}|{CONTEXT_SETTINGS}".encode()).hexdigest()[:32]


def tokens_hash(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


def cache_file(key: ReferenceKey) -> Path:
    return sub_cache(REFERENCE) / f"{key.digest}.states"


# -- storage precision ----------------------------------------------------------------------------------


def output_weight_type(reference: ModelFile) -> int:
    names = {t.name for t in reference.gguf.tensors}
    return reference.gguf.tensor(OUTPUT_WEIGHT if OUTPUT_WEIGHT in names else TIED_WEIGHT).ggml_type


def to_storage(hidden: np.ndarray, weight_type: int) -> np.ndarray:
    """Round h as ggml does before the output product (round to nearest even), losing nothing it uses."""
    if weight_type == GGMLType.F16:
        return hidden.astype(np.float16)
    if weight_type == GGMLType.BF16:
        bits = np.ascontiguousarray(hidden, dtype=np.float32).view(np.uint32)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # ggml_compute_fp32_to_bf16
        return rounded.astype(np.uint16)
    return np.ascontiguousarray(hidden, dtype=np.float32)


def from_storage(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.uint16:  # BF16 bits
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


# -- the cache ------------------------------------------------------------------------------------------


class ReferenceStore:
    """Hidden states of the scored positions, window by window: a raw array of shape
    (windows in the text, scored_per_window, n_embd) in the storage dtype, in a file, and the set of
    windows it holds."""

    def __init__(
        self, key: ReferenceKey, plan: WindowPlan, n_embd: int, dtype: np.dtype, meta: dict[str, Any]
    ):
        self.key = key
        self.dtype = np.dtype(dtype)
        self.shape = (plan.n_text_windows, plan.scored_per_window, n_embd)
        self.window_bytes = plan.scored_per_window * n_embd * self.dtype.itemsize
        self.path = cache_file(key)
        self.meta_path = self.path.with_suffix(".json")
        self.meta = {**meta, "key": key.digest, "dtype": self.dtype.str, "shape": list(self.shape)}
        self.computed = 0  # windows computed by this run (not read from the cache)
        self.filled: set[int] = set()
        self.persistent = True  # False when the cache directory cannot be written
        self._file = self._open()

    def _open(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.filled = self._cached_windows()
            if not self.filled:
                with open(self.path, "wb") as f:
                    f.truncate(self.shape[0] * self.window_bytes)  # sparse: no disk until written
            return open(self.path, "r+b")  # noqa: SIM115 (closed in close())
        except OSError:
            # A read-only cache only costs recomputing the reference next time; the states of this run
            # still go to disk, not memory.
            self.filled, self.persistent = set(), False
            return tempfile.TemporaryFile()  # noqa: SIM115

    def _cached_windows(self) -> set[int]:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            if (
                meta.get("key") != self.key.digest
                or meta.get("dtype") != self.dtype.str
                or meta.get("shape") != list(self.shape)
                or self.path.stat().st_size != self.shape[0] * self.window_bytes
            ):
                return set()
            filled = {int(w) for w in meta.get("filled", [])}
        except (OSError, ValueError, TypeError, AttributeError):
            return set()  # missing, from an older phiquant, or damaged: rebuilt
        return filled if all(0 <= w < self.shape[0] for w in filled) else set()

    @property
    def from_cache(self) -> bool:
        """True when every window this run used was already in the cache."""
        return self.computed == 0

    def missing(self, indices: np.ndarray) -> list[int]:
        return [int(w) for w in indices if int(w) not in self.filled]

    def write(self, index: int, stored: np.ndarray) -> None:
        data = np.ascontiguousarray(stored, dtype=self.dtype)
        assert data.nbytes == self.window_bytes
        self._file.seek(index * self.window_bytes)
        self._file.write(data.tobytes())
        self.filled.add(index)
        self.computed += 1

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The windows `indices` (all held) as (n_rows, n_embd) float32, rows window after window."""
        out = np.empty((len(indices), self.shape[1] * self.shape[2]), dtype=self.dtype)
        for row, index in enumerate(indices):
            self._file.seek(int(index) * self.window_bytes)
            out[row] = np.frombuffer(self._file.read(self.window_bytes), dtype=self.dtype)
        return from_storage(out.reshape(-1, self.shape[2]))

    def commit(self) -> None:
        """Record which windows the file holds (after their bytes are written)."""
        if not self.persistent:
            return
        try:
            self._file.flush()
            temporary_files.write_text(
                self.meta_path, json.dumps({**self.meta, "filled": sorted(self.filled)})
            )
        except OSError:
            pass

    def close(self) -> None:
        self.commit()
        self._file.close()


class ReferenceSource:
    """The reference's hidden states for any windows: read from the store, or computed by running the
    reference over the windows the store lacks (loaded the first time it is needed) and stored."""

    def __init__(self, reference: ModelFile, plan: WindowPlan, n_threads: int | None, reporter: Reporter):
        self.reference, self.plan, self.n_threads, self.reporter = reference, plan, n_threads, reporter
        self.weight_type = output_weight_type(reference)
        self.key = ReferenceKey(content_hash(reference.gguf), tokens_hash(plan.tokens), plan.ctx)
        names = {t.name for t in reference.gguf.tensors}
        n_embd = reference.gguf.tensor(OUTPUT_WEIGHT if OUTPUT_WEIGHT in names else TIED_WEIGHT).shape[0]
        meta = {
            "reference": str(reference.path),
            "ctx": plan.ctx,
            "model_hash": self.key.model_hash,
            "tokens_hash": self.key.tokens_hash,
            "llama_cpp": llama_cpp.__version__,
        }
        dtype = to_storage(np.zeros(1, np.float32), self.weight_type).dtype
        self.store = ReferenceStore(self.key, plan, n_embd, dtype, meta)
        self._stack = ExitStack()
        self._context: Context | None = None
        self._checked = False

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def from_cache(self) -> bool:
        return self.store.from_cache

    def hidden(self, indices: np.ndarray) -> np.ndarray:
        """The windows `indices` as (n_rows, n_embd) float32 hidden states, rows window after window."""
        missing = self.store.missing(indices)
        if missing:
            self._compute(np.asarray(missing, dtype=np.int64))
        return self.store.read(indices)

    def _compute(self, indices: np.ndarray) -> None:
        context = self._open_context()
        out = context.decode_windows(self.plan.windows_at(indices), self.plan.first_scored)
        assert out.hidden is not None
        stored = to_storage(out.hidden[:, :-1], self.weight_type)  # the last position predicts nothing
        if not self._checked:
            with OutputLayer(self.reference.gguf, self.n_threads) as output_layer:
                _check_rebuilt_logits(output_layer, stored, out.logits[:, :-1], self.reference)
            self._checked = True
        for index, window in zip(indices, stored):
            self.store.write(int(index), window)
        self.store.commit()

    def _open_context(self) -> Context:
        if self._context is None:
            n_seq = self.plan.windows_per_batch
            self.reporter.note(f"computing the reference's logits with {self.reference.path.name}")
            # Plain kernels (no repacked buffers) so the output layer run by ggml alone matches llama.cpp's.
            model = self._stack.enter_context(
                LoadedModel(self.reference.path, LoadOptions(use_extra_bufts=False))
            )
            self._context = self._stack.enter_context(
                model.new_context(
                    n_seq * self.plan.ctx,
                    n_batch=n_seq * self.plan.ctx,
                    n_threads=self.n_threads,
                    n_seq_max=n_seq,
                    embeddings=True,
                )
            )
        return self._context

    def close(self) -> None:
        self._stack.close()
        self.store.close()

    def __enter__(self) -> ReferenceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_rebuilt_logits(
    output_layer: OutputLayer, stored: np.ndarray, logits: np.ndarray, reference: ModelFile
) -> None:
    rebuilt = output_layer.logits(from_storage(stored.reshape(-1, stored.shape[-1])))
    returned = logits.reshape(rebuilt.shape)
    if not np.array_equal(rebuilt, returned):
        worst = float(np.max(np.abs(rebuilt - returned)))
        raise PhiquantError(
            "cannot cache this reference: its logits are not its output layer applied to its last hidden "
            f"state (largest difference {worst:.3g}); use another --ref",
            path=reference.path,
        )
