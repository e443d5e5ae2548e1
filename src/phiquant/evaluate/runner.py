"""The evaluation pass: every file over the same windows, scored against the reference's rebuilt logits.

Files are loaded together in groups that fit in memory, and each batch of windows is decoded by every
file of the group before it is scored: the reference's logits of the batch are rebuilt once for the whole
group (for a small model the output layer is a large share of the work), and the softmax of each chunk of
reference rows is shared by all files.  Decoding goes through phiquant's runtime (runtime.loader's
AMX-safe loading, one llama.cpp context per file with one KV stream per window, as llama-perplexity).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from phiquant.evaluate.files import ModelFile
from phiquant.evaluate.output_layer import OutputLayer
from phiquant.evaluate.reference import ReferenceStates
from phiquant.evaluate.scoring import TokenScores, score_batch
from phiquant.evaluate.windows import WindowPlan
from phiquant.progress import Reporter
from phiquant.runtime.llama import Context
from phiquant.runtime.loader import load_model

MEMORY_SHARE = 0.4  # of available memory for the files of one group (mapped weights, KV caches, logits)


@dataclass(frozen=True)
class PassResult:
    scores: list[TokenScores]  # one per file, in the order given
    reference_scores: TokenScores | None  # the reference's own, from its rebuilt logits
    decode_seconds: float  # time spent inside llama.cpp's decode, all files together
    seconds: float  # the whole pass: decoding, rebuilding reference logits, scoring


def available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_estimate(file: ModelFile, plan: WindowPlan) -> int:
    """Mapped weights + F16 KV cache + the logits buffer of one batch."""
    gguf, arch = file.gguf, file.gguf.arch
    n_layer = int(gguf.get(f"{arch}.block_count", 0) or 0)
    n_embd = int(gguf.get(f"{arch}.embedding_length", 0) or 0)
    n_head = int(gguf.get(f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(gguf.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    n_tokens = plan.windows_per_batch * plan.ctx
    kv = 2 * 2 * n_layer * n_tokens * (n_embd // n_head * n_head_kv)
    n_vocab = len(gguf.get("tokenizer.ggml.tokens") or [])
    logits = 4 * n_vocab * plan.windows_per_batch * (plan.ctx - plan.first_scored)
    return file.file_size + kv + logits


def group_files(files: Sequence[ModelFile], plan: WindowPlan, budget: int) -> list[list[int]]:
    """Indices of files to evaluate together, in order, each group within `budget` (at least one file)."""
    groups: list[list[int]] = []
    used = 0
    for index, file in enumerate(files):
        need = memory_estimate(file, plan)
        if groups and used + need <= budget:
            groups[-1].append(index)
            used += need
        else:
            groups.append([index])
            used = need
    return groups


def evaluate_pass(
    files: Sequence[ModelFile],
    plan: WindowPlan,
    reference: ModelFile | None,
    states: ReferenceStates | None,
    *,
    n_threads: int | None,
    reporter: Reporter,
    memory_budget: int | None = None,
) -> PassResult:
    began_pass = time.perf_counter()
    budget = memory_budget if memory_budget is not None else int(MEMORY_SHARE * available_memory())
    scores = [TokenScores() for _ in files]
    reference_scores = TokenScores() if states is not None else None
    decode_seconds = 0.0
    reporter.start("evaluating", plan.n_windows * len(files), "windows")
    with ExitStack() as outer:
        output_layer = (
            outer.enter_context(OutputLayer(reference.gguf, n_threads)) if reference and states else None
        )
        for group_number, group in enumerate(group_files(files, plan, budget)):
            with ExitStack() as stack:
                contexts = [_open_context(stack, files[i], plan, n_threads) for i in group]
                for start, stop in plan.batches():
                    rebuilt = None
                    if output_layer is not None and states is not None:
                        rebuilt = output_layer.logits(states.batch(start, stop))
                    outputs = []
                    for context in contexts:
                        began = time.perf_counter()
                        outputs.append(
                            context.decode_windows(plan.window_tokens(start, stop), plan.first_scored)
                        )
                        decode_seconds += time.perf_counter() - began
                    targets = plan.targets(start, stop)
                    per_window = plan.scored_per_window
                    for window in range(stop - start):
                        rows = slice(window * per_window, (window + 1) * per_window)
                        score_batch(
                            [out.logits[window, :-1] for out in outputs],
                            targets[window],
                            rebuilt[rows] if rebuilt is not None else None,
                            [scores[i] for i in group],
                            reference_scores if group_number == 0 else None,
                        )
                    reporter.advance((stop - start) * len(group))
    reporter.finish()
    return PassResult(scores, reference_scores, decode_seconds, time.perf_counter() - began_pass)


def _open_context(stack: ExitStack, file: ModelFile, plan: WindowPlan, n_threads: int | None) -> Context:
    model = stack.enter_context(load_model(file.path))
    n_tokens = plan.windows_per_batch * plan.ctx
    return stack.enter_context(
        model.new_context(n_tokens, n_batch=n_tokens, n_threads=n_threads, n_seq_max=plan.windows_per_batch)
    )
