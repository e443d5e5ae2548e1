"""A small typed layer over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

phiquant uses the C API directly rather than llama-cpp-python's high-level `Llama` class because it
needs model parameters that class does not expose (`use_extra_bufts`, see runtime.loader), several
contexts sharing one model (server slots), and logits for every position of a batch.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from phiquant.errors import PhiquantError
from phiquant.ggml.types import GGMLType

# llama.cpp calls back into Python (its log, the eval callback) from inside these C calls; a Ctrl-C
# handler raising there would be swallowed by ctypes ("Exception ignored") and the interrupt lost, or
# leave llama.cpp mid-graph.  The calls run with SIGINT/SIGTERM held and the signal acts when they return.
from phiquant.temporary_files import signals_held

LOG_ENV = "PHIQUANT_LLAMA_LOG"  # =1 copies llama.cpp's log to stderr

_backend_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # kept alive: llama.cpp holds the pointer
_log_listeners: list[Callable[[str], None]] = []

# cb_eval: (address of a struct ggml_tensor, ask) -> want the data / go on computing
EvalCallback = Callable[[int, bool], bool]


def _forward_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    for listener in list(_log_listeners):
        listener(line)
    if os.environ.get(LOG_ENV) == "1":
        sys.stderr.write(line)


def ensure_backend() -> None:
    """Initialise llama.cpp once; its log goes to listeners (capture_llama_log), and to stderr only
    with PHIQUANT_LLAMA_LOG=1."""
    global _backend_ready, _log_callback
    with _backend_lock:
        if _backend_ready:
            return
        _log_callback = lc.llama_log_callback(_forward_log)
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


@contextmanager
def capture_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines while the block runs (what it allocated, which buffers)."""
    ensure_backend()
    lines: list[str] = []
    listener = lines.append
    _log_listeners.append(listener)
    try:
        yield lines
    finally:
        _log_listeners.remove(listener)


@dataclass(frozen=True)
class LoadOptions:
    n_gpu_layers: int = 0
    use_extra_bufts: bool = True
    use_mmap: bool = True
    vocab_only: bool = False  # the tokenizer without the weights


class LoadedModel:
    """A GGUF model loaded by llama.cpp; free it with close() (or use it as a context manager)."""

    def __init__(self, path: str | Path, options: LoadOptions = LoadOptions()):
        ensure_backend()
        self.path = Path(path)
        self.options = options
        params = lc.llama_model_default_params()
        params.n_gpu_layers = options.n_gpu_layers
        params.use_extra_bufts = options.use_extra_bufts
        params.vocab_only = options.vocab_only
        if not options.use_mmap:
            params.load_mode = lc.LLAMA_LOAD_MODE_NONE
        with signals_held():
            self._model = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise PhiquantError(
                "llama.cpp could not load this model (see the llama.cpp log with PHIQUANT_LLAMA_LOG=1)",
                path=self.path,
            )
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self._model)
        self.n_layer = lc.llama_model_n_layer(self._model)
        self.extra_bufts_reason = ""  # why use_extra_bufts is what it is (runtime.loader)

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    def metadata_value(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", errors="replace") if n >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        tokens = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            tokens = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, parse_special)
        return list(tokens[:n])

    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:n]

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_piece(t, special=special) for t in tokens).decode(
            "utf-8", errors="replace"
        )

    def token_text(self, token: int) -> str:
        return lc.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self._vocab, token))

    @property
    def n_embd_out(self) -> int:
        """Width of the hidden state llama.cpp returns as embeddings (the output layer's input)."""
        return int(lc.llama_model_n_embd_out(self._model))

    @property
    def adds_bos(self) -> bool:
        """Whether llama.cpp puts BOS before tokenized text (tokenizer.ggml.add_bos_token)."""
        return bool(lc.llama_vocab_get_add_bos(self._vocab))

    @property
    def bos_id(self) -> int:
        return int(lc.llama_vocab_bos(self._vocab))

    def new_context(
        self,
        n_ctx: int,
        *,
        n_batch: int | None = None,
        n_threads: int | None = None,
        reference_precision: bool = False,
        n_seq_max: int = 1,
        kv_unified: bool = False,
        embeddings: bool = False,
        eval_callback: EvalCallback | None = None,
    ) -> Context:
        return Context(
            self,
            n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            reference_precision=reference_precision,
            n_seq_max=n_seq_max,
            kv_unified=kv_unified,
            embeddings=embeddings,
            eval_callback=eval_callback,
        )


class Context:
    """One llama.cpp context (KV cache) over a loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        n_ctx: int,
        *,
        n_batch: int | None = None,
        n_threads: int | None = None,
        reference_precision: bool = False,
        n_seq_max: int = 1,
        kv_unified: bool = False,
        embeddings: bool = False,
        eval_callback: EvalCallback | None = None,
    ):
        self.model = model
        params = lc.llama_context_default_params()
        if reference_precision:
            # Comparisons with transformers need F32 throughout: the default F16 KV cache and the CPU
            # flash-attention path (which rounds Q to F16) cost about 1e-6 NMSE and flip near-tied top-1s.
            params.type_k = params.type_v = GGMLType.F32
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_ctx = n_ctx
        params.n_batch = n_batch or min(n_ctx, 512)
        params.n_ubatch = min(params.n_batch, 512)  # llama.cpp's default micro-batch
        # One KV stream per sequence (kv_unified off), as llama.cpp's perplexity tool runs its windows:
        # each sequence then holds n_ctx / n_seq_max tokens, and that per-sequence size (n_ctx_seq) is
        # what picks LongRoPE's factor set (llama-model.cpp, get_rope_factors).
        params.n_seq_max = n_seq_max
        params.kv_unified = kv_unified
        params.embeddings = embeddings
        if n_threads:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        # The scheduler's per-node callback (phiquant.ggml.graph): kept referenced while llama.cpp holds it.
        self._eval_callback = None
        if eval_callback is not None:
            self._eval_callback = lc.ggml_backend_sched_eval_callback(
                lambda tensor, ask, user_data: eval_callback(tensor, ask)
            )
            params.cb_eval = self._eval_callback
        with signals_held():
            self._ctx = lc.llama_init_from_model(model._model, params)
        if not self._ctx:
            raise PhiquantError(
                f"llama.cpp could not create a context of {n_ctx} tokens (out of memory?)", path=model.path
            )
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.n_ctx_seq = lc.llama_n_ctx_seq(self._ctx)
        self.n_batch = params.n_batch
        self.tokens: list[int] = []  # what the KV cache holds, position by position
        self.embeddings = embeddings
        self._window_batch: _TokenBatch | None = None

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def close(self) -> None:
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_threads(self) -> int:
        return int(lc.llama_n_threads(self._ctx))

    def clear(self) -> None:
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        self.tokens = []

    def keep_prefix(self, n: int) -> None:
        """Forget every position from `n` on, keeping the first `n` tokens' keys and values."""
        if n >= self.n_past:
            return
        if n <= 0 or not lc.llama_memory_seq_rm(lc.llama_get_memory(self._ctx), 0, n, -1):
            self.clear()
            return
        del self.tokens[n:]

    def decode(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray:
        """Feed tokens after what the context already holds; return logits (n x vocab) for every
        position when `all_logits`, else for the last position only (1 x vocab)."""
        if self.n_past + len(tokens) > self.n_ctx:
            raise PhiquantError(f"{self.n_past + len(tokens)} tokens do not fit a context of {self.n_ctx}")
        outputs = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last_chunk = start + self.n_batch >= len(tokens)
            outputs.append(self._decode_batch(chunk, all_logits=all_logits, want_last=last_chunk))
        return np.concatenate([o for o in outputs if o is not None], axis=0)

    def _decode_batch(self, tokens: Sequence[int], *, all_logits: bool, want_last: bool) -> np.ndarray | None:
        n = len(tokens)
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or (want_last and i == n - 1)
            batch.n_tokens = n
            with signals_held():
                status = lc.llama_decode(self._ctx, batch)
            if status != 0:
                raise PhiquantError(
                    f"llama.cpp failed to evaluate {n} tokens (llama_decode returned {status})"
                )
            self.tokens.extend(tokens)
            n_vocab = self.model.n_vocab
            if all_logits:
                pointer = lc.llama_get_logits(self._ctx)
                return np.ctypeslib.as_array(pointer, shape=(n * n_vocab,)).reshape(n, n_vocab).copy()
            if want_last:
                pointer = lc.llama_get_logits_ith(self._ctx, -1)
                return np.ctypeslib.as_array(pointer, shape=(n_vocab,)).reshape(1, n_vocab).copy()
            return None
        finally:
            lc.llama_batch_free(batch)

    def last_logits(self) -> np.ndarray:
        """The logits of the last position evaluated (after a decode that asked for them)."""
        pointer = lc.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,)).copy()

    def remove_sequence_positions(self, seq_id: int, start: int) -> None:
        """Forget sequence `seq_id` from position `start` on (0: all of it)."""
        if not lc.llama_memory_seq_rm(lc.llama_get_memory(self._ctx), seq_id, start, -1):
            raise PhiquantError(f"llama.cpp could not remove positions {start}- of sequence {seq_id}")

    def copy_sequence(self, source: int, destination: int) -> None:
        """Make `destination` hold what `source` holds (llama.cpp copies the KV stream at the next decode)."""
        lc.llama_memory_seq_cp(lc.llama_get_memory(self._ctx), source, destination, -1, -1)

    def sequence_length(self, seq_id: int) -> int:
        """How many positions llama.cpp's KV cache holds for `seq_id` (its highest position + 1)."""
        return int(lc.llama_memory_seq_pos_max(lc.llama_get_memory(self._ctx), seq_id)) + 1

    def decode_sequences(
        self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray, outputs: np.ndarray
    ) -> None:
        """One llama_decode of tokens from several sequences (token i at positions[i] of seq_ids[i]);
        the logits of the rows where outputs[i] is set are then read with `logits_row(i)` or sampled
        at batch index i.  Does not touch `self.tokens` (each caller tracks its sequences)."""
        n = len(tokens)
        if self._window_batch is None or self._window_batch.capacity < n:
            self._window_batch = _TokenBatch(max(n, self.n_batch))
        self._window_batch.fill_tokens(tokens, positions, seq_ids, outputs)
        with signals_held():
            status = lc.llama_decode(self._ctx, self._window_batch.struct)
        if status != 0:
            raise PhiquantError(f"llama.cpp failed to evaluate {n} tokens (llama_decode returned {status})")

    def logits_row(self, index: int) -> np.ndarray:
        """A copy of the logits of batch index `index` of the last decode."""
        pointer = lc.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,)).copy()

    def decode_windows(self, windows: np.ndarray, output_from: int) -> WindowOutput:
        """Evaluate independent token windows in one batch, window i as sequence i at positions
        0..n-1, after clearing the cache; return the outputs of positions >= `output_from`.

        The arrays are views of llama.cpp's buffers, valid until this context decodes again."""
        n_seq, length = windows.shape
        if windows.size > self.n_batch or length > self.n_ctx // max(n_seq, 1) + 1:
            raise ValueError(f"{n_seq} windows of {length} tokens do not fit this context")
        if self._window_batch is None or self._window_batch.capacity < windows.size:
            self._window_batch = _TokenBatch(self.n_batch)
        batch = self._window_batch
        batch.fill(windows, output_from, all_outputs=self.embeddings)
        self.clear()
        with signals_held():
            status = lc.llama_decode(self._ctx, batch.struct)
        if status != 0:
            raise PhiquantError(
                f"llama.cpp failed to evaluate {windows.size} tokens (llama_decode returned {status})"
            )
        self.tokens = windows[0].tolist()  # sequence 0 (the others live in their own KV streams)
        n_vocab = self.model.n_vocab
        n_outputs = windows.size if self.embeddings else n_seq * (length - output_from)
        logits = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(n_outputs * n_vocab,))
        if not self.embeddings:
            return WindowOutput(logits.reshape(n_seq, length - output_from, n_vocab), None)
        # Embedding contexts output every position; keep the scored ones.
        n_embd = self.model.n_embd_out
        hidden = np.ctypeslib.as_array(lc.llama_get_embeddings(self._ctx), shape=(n_outputs * n_embd,))
        return WindowOutput(
            logits.reshape(n_seq, length, n_vocab)[:, output_from:],
            hidden.reshape(n_seq, length, n_embd)[:, output_from:],
        )


@dataclass(frozen=True)
class WindowOutput:
    """What `Context.decode_windows` returns: (windows, positions, ...) views of llama.cpp's buffers."""

    logits: np.ndarray  # (n_seq, n_positions, n_vocab) float32
    hidden: np.ndarray | None  # (n_seq, n_positions, n_embd) float32: the output layer's input


class _TokenBatch:
    """A llama_batch whose arrays are numpy arrays, so that thousands of tokens are placed without a
    Python loop (llama_batch_init's per-token seq_id arrays would need one)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.output = np.zeros(capacity, dtype=np.int8)
        # llama_seq_id ** : one pointer per token, each into self.seq_id
        self.seq_id_pointers = (self.seq_id.ctypes.data + 4 * np.arange(capacity, dtype=np.uint64)).astype(
            np.uint64
        )
        # Built field by field (llama-cpp-python annotates these pointers as arrays, hence the Any).
        struct: Any = lc.llama_batch()
        struct.token = self.token.ctypes.data_as(ctypes.POINTER(lc.llama_token))
        struct.embd = ctypes.POINTER(ctypes.c_float)()
        struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        struct.seq_id = ctypes.cast(
            self.seq_id_pointers.ctypes.data, ctypes.POINTER(ctypes.POINTER(lc.llama_seq_id))
        )
        struct.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = struct

    def fill(self, windows: np.ndarray, output_from: int, *, all_outputs: bool) -> None:
        n_seq, length = windows.shape
        n = n_seq * length
        positions = np.arange(length, dtype=np.int32)
        self.token[:n] = windows.reshape(-1)
        self.pos[:n] = np.tile(positions, n_seq)
        self.seq_id[:n] = np.repeat(np.arange(n_seq, dtype=np.int32), length)
        self.output[:n] = 1 if all_outputs else np.tile(positions >= output_from, n_seq)
        self.struct.n_tokens = n

    def fill_tokens(
        self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray, outputs: np.ndarray
    ) -> None:
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = positions
        self.seq_id[:n] = seq_ids
        self.output[:n] = outputs
        self.struct.n_tokens = n
