"""Measuring what a quantized file lost: perplexity, KL divergence from the unquantized reference,
speed and size, for every file of a model, and which one to pick.

windows.py      how a text becomes perplexity windows (llama.cpp's perplexity tool's layout)
scoring.py      exact per-token scores over the whole vocabulary (NLL, KLD, top token, Δp)
output_layer.py the output layer run by ggml's kernels: logits rebuilt from hidden states, bit for bit
reference.py    the reference's hidden states, computed once and cached on disk
files.py        which files are one model, which is the reference
runner.py       the batched pass over every file (grouped to fit memory)
speed.py        prompt-processing and generation speed
statistics.py   per-token scores summed into the report's figures
evaluation.py   evaluate_files(): all of the above for a list of files
report.py       Markdown, JSON and the recommendation; plot.py draws size against KLD
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phiquant.evaluate.evaluation import Evaluation


class _EvaluatePackage(types.ModuleType):
    """`phiquant.evaluate` is both this package and the API function `phiquant.api.evaluate`: Python
    binds a package's submodules as attributes of its parent, so the package object itself must be
    the callable `phiquant.evaluate(files, ...)` that the API documents (evaluation.evaluate)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Evaluation:
        from phiquant.evaluate.evaluation import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _EvaluatePackage
