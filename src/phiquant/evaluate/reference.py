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
The file is a zlib-compressed .npz under `<cache dir>/reference/`, keyed by the reference's content hash,
the hash of the token ids (the text as this vocabulary reads it), the window size, the llama.cpp version
and the context settings.  A cache holding more windows than asked for serves any prefix of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from phiquant.cache import REFERENCE, sub_cache
from phiquant.errors import PhiquantError
from phiquant.evaluate.files import ModelFile, content_hash
from phiquant.evaluate.output_layer import OUTPUT_WEIGHT, TIED_WEIGHT, OutputLayer
from phiquant.evaluate.windows import WindowPlan
from phiquant.ggml.types import GGMLType
from phiquant.progress import Reporter
from phiquant.runtime.llama import LoadedModel, LoadOptions

CACHE_FORMAT = 1
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
    return sub_cache(REFERENCE) / f"{key.digest}.npz"


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


@dataclass
class ReferenceStates:
    """Hidden states of every scored position: (n_windows, scored_per_window, n_embd), stored dtype."""

    key: ReferenceKey
    hidden: np.ndarray
    path: Path
    from_cache: bool

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Windows start..stop-1 as (n_rows, n_embd) float32, rows in text order."""
        return from_storage(self.hidden[start:stop].reshape(-1, self.hidden.shape[-1]))


def load_cached(key: ReferenceKey, plan: WindowPlan) -> ReferenceStates | None:
    path = cache_file(key)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("key") != key.digest or archive["hidden"].shape[0] < plan.n_windows:
                return None
            hidden = archive["hidden"][: plan.n_windows]
    except (OSError, KeyError, ValueError):
        return None  # missing, from an older phiquant, or damaged: rebuilt below
    if hidden.shape[1] != plan.scored_per_window:
        return None
    return ReferenceStates(key, hidden, path, from_cache=True)


def save(states: ReferenceStates, reference: ModelFile) -> None:
    meta = {
        "key": states.key.digest,
        "reference": str(reference.path),
        "ctx": states.key.ctx,
        "model_hash": states.key.model_hash,
        "tokens_hash": states.key.tokens_hash,
        "llama_cpp": llama_cpp.__version__,
    }
    path = states.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(temp, hidden=states.hidden, meta=np.array(json.dumps(meta)))
        os.replace(temp, path)
    except OSError:
        pass  # a read-only cache only costs recomputing the reference next time


def compute(
    reference: ModelFile, plan: WindowPlan, key: ReferenceKey, n_threads: int | None, reporter: Reporter
) -> ReferenceStates:
    """Run the reference once over every window, keeping the hidden states of the scored positions."""
    weight_type = output_weight_type(reference)
    n_seq = plan.windows_per_batch
    # Plain kernels (no repacked buffers) so the output layer run by ggml alone matches llama.cpp's.
    options = LoadOptions(use_extra_bufts=False)
    with (
        LoadedModel(reference.path, options) as model,
        model.new_context(
            n_seq * plan.ctx, n_batch=n_seq * plan.ctx, n_threads=n_threads, n_seq_max=n_seq, embeddings=True
        ) as context,
        OutputLayer(reference.gguf, n_threads) as output_layer,
    ):
        hidden = np.empty(
            (plan.n_windows, plan.scored_per_window, model.n_embd_out),
            dtype=to_storage(np.zeros(1, np.float32), weight_type).dtype,
        )
        reporter.start(f"reference {reference.path.name}", plan.n_windows, "windows")
        for start, stop in plan.batches():
            out = context.decode_windows(plan.window_tokens(start, stop), plan.first_scored)
            assert out.hidden is not None
            stored = to_storage(out.hidden[:, :-1], weight_type)  # the last position predicts nothing
            if start == 0:
                _check_rebuilt_logits(output_layer, stored, out.logits[:, :-1], reference)
            hidden[start:stop] = stored
            reporter.advance(stop - start)
        reporter.finish()
    return ReferenceStates(key, hidden, cache_file(key), from_cache=False)


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


def reference_states(
    reference: ModelFile, plan: WindowPlan, n_threads: int | None, reporter: Reporter
) -> ReferenceStates:
    key = ReferenceKey(content_hash(reference.gguf), tokens_hash(plan.tokens), plan.ctx)
    cached = load_cached(key, plan)
    if cached is not None:
        reporter.note(f"reference logits from the cache {cached.path}")
        return cached
    states = compute(reference, plan, key, n_threads, reporter)
    save(states, reference)
    return states
