"""A model's output layer run by ggml's own CPU kernels, so logits rebuilt from hidden states are the
logits llama.cpp computed, bit for bit.

The reference cache (evaluate/reference.py) stores the hidden state each scored token leaves the last
layer with (what llama.cpp returns as its embedding: the input of `output.weight`), and rebuilds the
full-vocabulary logits with one matrix product when a file is compared against it.  Doing that product
with numpy would differ from llama.cpp in the last bits (ggml rounds the activations to the weight's
dot-product type first, F16 for F16 weights, Q8_K for k-quants, and sums in its own order); calling the
same ggml kernels through a one-node graph gives the identical result, which the cache checks against
llama.cpp's logits when it is made.

Bindings follow phiquant/ggml/kernels.py: the C prototype as a comment, argtypes/restype, typed wrappers.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

import numpy as np

from phiquant.errors import PhiquantError
from phiquant.ggml.library import BASE, CPU, load_library
from phiquant.ggml.types import GGMLType, type_info
from phiquant.gguf_io import GGUFFile

GGML_STATUS_SUCCESS = 0
# The tensors llama.cpp's output layer reads; a model without output.weight ties it to the embedding.
OUTPUT_WEIGHT, TIED_WEIGHT, OUTPUT_BIAS = "output.weight", "token_embd.weight", "output.bias"


class _InitParams(ctypes.Structure):
    # struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _ComputePlan(ctypes.Structure):
    # struct ggml_cplan { size_t work_size; uint8_t * work_data; int n_threads;
    #     struct ggml_threadpool * threadpool; ggml_abort_callback abort_callback;
    #     void * abort_callback_data; bool use_ref; };
    _fields_ = [
        ("work_size", ctypes.c_size_t),
        ("work_data", ctypes.c_void_p),
        ("n_threads", ctypes.c_int),
        ("threadpool", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


@dataclass(frozen=True)
class _Libraries:
    base: ctypes.CDLL
    cpu: ctypes.CDLL


@functools.cache
def _libraries() -> _Libraries:
    base, cpu = load_library(BASE), load_library(CPU)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    signatures: list[tuple[ctypes.CDLL, str, list[type], type | None]] = [
        # struct ggml_context * ggml_init(struct ggml_init_params params);
        (base, "ggml_init", [_InitParams], p),
        # void ggml_free(struct ggml_context * ctx);
        (base, "ggml_free", [p], None),
        # size_t ggml_tensor_overhead(void);  size_t ggml_graph_overhead(void);
        (base, "ggml_tensor_overhead", [], ctypes.c_size_t),
        (base, "ggml_graph_overhead", [], ctypes.c_size_t),
        # struct ggml_tensor * ggml_new_tensor_1d(ctx, enum ggml_type type, int64_t ne0);
        (base, "ggml_new_tensor_1d", [p, ctypes.c_int, i64], p),
        # struct ggml_tensor * ggml_new_tensor_2d(ctx, enum ggml_type type, int64_t ne0, int64_t ne1);
        (base, "ggml_new_tensor_2d", [p, ctypes.c_int, i64, i64], p),
        # struct ggml_tensor * ggml_mul_mat(ctx, struct ggml_tensor * a, struct ggml_tensor * b);
        (base, "ggml_mul_mat", [p, p, p], p),
        # struct ggml_tensor * ggml_add(ctx, struct ggml_tensor * a, struct ggml_tensor * b);
        (base, "ggml_add", [p, p, p], p),
        # void * ggml_get_data(const struct ggml_tensor * tensor);
        (base, "ggml_get_data", [p], p),
        # struct ggml_cgraph * ggml_new_graph(struct ggml_context * ctx);
        (base, "ggml_new_graph", [p], p),
        # void ggml_build_forward_expand(struct ggml_cgraph * cgraph, struct ggml_tensor * tensor);
        (base, "ggml_build_forward_expand", [p, p], None),
        # void ggml_cpu_init(void);
        (cpu, "ggml_cpu_init", [], None),
        # struct ggml_cplan ggml_graph_plan(const struct ggml_cgraph * cgraph, int n_threads,
        #                                   struct ggml_threadpool * threadpool);
        (cpu, "ggml_graph_plan", [p, ctypes.c_int, p], _ComputePlan),
        # enum ggml_status ggml_graph_compute(struct ggml_cgraph * cgraph, struct ggml_cplan * cplan);
        (cpu, "ggml_graph_compute", [p, ctypes.POINTER(_ComputePlan)], ctypes.c_int),
    ]
    for library, name, argtypes, restype in signatures:
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = restype
    cpu.ggml_cpu_init()
    return _Libraries(base, cpu)


MEMORY_ALIGNMENT = 64  # ggml asserts GGML_MEM_ALIGN (16); a cache line is safe everywhere


def aligned_buffer(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + MEMORY_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % MEMORY_ALIGNMENT
    return raw[start : start + nbytes]


class _GgmlContext:
    """A ggml context whose memory is a numpy buffer, so results can be returned as views of it."""

    def __init__(self, mem_size: int):
        self.lib = _libraries()
        self.buffer = aligned_buffer(mem_size)
        self.handle = self.lib.base.ggml_init(_InitParams(mem_size, self.buffer.ctypes.data, False))
        if not self.handle:
            raise MemoryError(f"ggml could not set up a context of {mem_size} bytes")

    def view(self, tensor: int, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 tensor's data as a numpy view that keeps this context's memory alive."""
        offset = self.lib.base.ggml_get_data(tensor) - self.buffer.ctypes.data
        count = int(np.prod(shape))
        return self.buffer[offset : offset + 4 * count].view(np.float32).reshape(shape)

    def tensor(self, ggml_type: int, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        if len(shape) == 1:
            tensor = self.lib.base.ggml_new_tensor_1d(self.handle, ggml_type, shape[0])
        else:
            tensor = self.lib.base.ggml_new_tensor_2d(self.handle, ggml_type, shape[0], shape[1])
        if data is not None:
            ctypes.memmove(self.lib.base.ggml_get_data(tensor), data.ctypes.data, data.nbytes)
        return int(tensor)

    def close(self) -> None:
        if self.handle:
            self.lib.base.ggml_free(self.handle)
            self.handle = None


def _tensor_bytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    rows = shape[1] if len(shape) > 1 else 1
    return type_info(ggml_type).row_bytes(shape[0]) * rows


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not the host's count
    except AttributeError:
        return os.cpu_count() or 1


class OutputLayer:
    """`logits(hidden)` = hidden x output.weight (+ output.bias), computed by ggml as llama.cpp does."""

    def __init__(self, gguf: GGUFFile, n_threads: int | None = None):
        names = {t.name for t in gguf.tensors}
        weight = gguf.tensor(OUTPUT_WEIGHT if OUTPUT_WEIGHT in names else TIED_WEIGHT)
        bias = gguf.tensor(OUTPUT_BIAS) if OUTPUT_BIAS in names else None
        if len(weight.shape) != 2 or _tensor_bytes(weight.ggml_type, weight.shape) != weight.nbytes:
            raise PhiquantError(f"{weight.name} has an unexpected shape {weight.shape}", path=gguf.path)
        self.n_embd, self.n_vocab = weight.shape
        self.weight_type = weight.ggml_type
        self.n_threads = n_threads or _usable_cpus()
        lib = _libraries()
        overhead = 4 * lib.base.ggml_tensor_overhead()
        self._weights = _GgmlContext(weight.nbytes + (bias.nbytes if bias else 0) + overhead + 4096)
        self._weight = self._weights.tensor(
            weight.ggml_type, weight.shape, np.asarray(gguf.raw_bytes(weight))
        )
        self._bias = None
        if bias is not None:
            if bias.ggml_type != GGMLType.F32 or bias.shape != (self.n_vocab,):
                raise PhiquantError(f"{OUTPUT_BIAS} is not an F32 vector of the vocabulary", path=gguf.path)
            self._bias = self._weights.tensor(GGMLType.F32, bias.shape, np.asarray(gguf.raw_bytes(bias)))

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """(n, n_embd) float32 hidden states -> (n, n_vocab) float32 logits."""
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        if hidden.ndim != 2 or hidden.shape[1] != self.n_embd:
            raise ValueError(f"hidden states of shape {hidden.shape}; the output layer takes {self.n_embd}")
        n = hidden.shape[0]
        lib = _libraries()
        mem = (
            hidden.nbytes
            + 2 * n * self.n_vocab * 4
            + 8 * lib.base.ggml_tensor_overhead()
            + lib.base.ggml_graph_overhead()
            + 4096
        )
        context = _GgmlContext(mem)
        try:
            inputs = context.tensor(GGMLType.F32, (self.n_embd, n), hidden)
            result = lib.base.ggml_mul_mat(context.handle, self._weight, inputs)
            if self._bias is not None:
                result = lib.base.ggml_add(context.handle, result, self._bias)
            graph = lib.base.ggml_new_graph(context.handle)
            lib.base.ggml_build_forward_expand(graph, result)
            plan = lib.cpu.ggml_graph_plan(graph, self.n_threads, None)
            work = np.empty(max(plan.work_size, 1), dtype=np.uint8)
            plan.work_data = work.ctypes.data
            status = lib.cpu.ggml_graph_compute(graph, ctypes.byref(plan))
            if status != GGML_STATUS_SUCCESS:
                raise RuntimeError(f"ggml_graph_compute returned {status}")
            return context.view(result, (n, self.n_vocab))
        finally:
            context.close()

    def close(self) -> None:
        self._weights.close()

    def __enter__(self) -> OutputLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
