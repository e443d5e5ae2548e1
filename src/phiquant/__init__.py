"""phiquant: Microsoft Phi models from Hugging Face checkpoints to quantized llama.cpp GGUF files.

The Python API (the CLI is a thin layer over it; every function returns dataclasses and reports
progress through an optional `reporter=`, a `phiquant.Reporter` subclass)::

    import phiquant
    phiquant.convert("microsoft/Phi-3.5-mini-instruct", "phi35-f16.gguf", "f16")
    result = phiquant.quantize("microsoft/Phi-3.5-mini-instruct", ["Q4_K_M", "Q8_0"], "out")
    report = phiquant.report("out")                 # evaluate every file, write the report and plot
    phiquant.model_card("out")                      # out/README.md for the Hugging Face Hub
    phiquant.merge("big-00001-of-00003.gguf")       # shards -> big.gguf, the unsplit file
    phiquant.ollama_modelfile("out/Phi-3.5-mini-instruct-Q4_K_M.gguf", "out/Modelfile")
    with phiquant.load("out/Phi-3.5-mini-instruct-Q4_K_M.gguf") as model:
        print(model.chat([{"role": "user", "content": "Hello"}]).text)

Names are imported on first use, so `import phiquant` stays cheap (no llama.cpp, no numpy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from phiquant.version import __version__

# name -> module that defines it
_EXPORTS = {
    "convert": "phiquant.api",
    "batch": "phiquant.api",
    "quantize": "phiquant.api",
    "inspect": "phiquant.api",
    "evaluate": "phiquant.evaluate",  # the package is callable: phiquant.api.evaluate (evaluate/__init__.py)
    "report": "phiquant.api",
    "load": "phiquant.api",
    "merge": "phiquant.api",
    "model_card": "phiquant.api",
    "ollama_modelfile": "phiquant.api",
    "ConvertResult": "phiquant.api",
    "QuantizeResult": "phiquant.api",
    "QuantizedFile": "phiquant.api",
    "QuantizeRequest": "phiquant.api",
    "SourceOptions": "phiquant.api",
    "Presets": "phiquant.api",
    "Overrides": "phiquant.api",
    "MaxSize": "phiquant.api",
    "TargetBpw": "phiquant.api",
    "RunOptions": "phiquant.api",
    "run_quantize": "phiquant.api",
    "plan_quantize": "phiquant.api",
    "MergeResult": "phiquant.api",
    "PhiquantError": "phiquant.errors",
    "Reporter": "phiquant.progress",
    "RecordingReporter": "phiquant.progress",
    "EvalOptions": "phiquant.evaluate.options",
    "RunnerOptions": "phiquant.runtime.runner",
    "SamplingOptions": "phiquant.runtime.sampling",
}

__all__ = [
    "ConvertResult",
    "EvalOptions",
    "MaxSize",
    "MergeResult",
    "Overrides",
    "PhiquantError",
    "Presets",
    "QuantizeRequest",
    "QuantizeResult",
    "QuantizedFile",
    "RecordingReporter",
    "Reporter",
    "RunOptions",
    "RunnerOptions",
    "SamplingOptions",
    "SourceOptions",
    "TargetBpw",
    "__version__",
    "batch",
    "convert",
    "evaluate",
    "inspect",
    "load",
    "merge",
    "model_card",
    "ollama_modelfile",
    "plan_quantize",
    "quantize",
    "report",
    "run_quantize",
]

if TYPE_CHECKING:
    from phiquant.api import (
        ConvertResult,
        MaxSize,
        MergeResult,
        Overrides,
        Presets,
        QuantizedFile,
        QuantizeRequest,
        QuantizeResult,
        RunOptions,
        SourceOptions,
        TargetBpw,
        batch,
        convert,
        evaluate,
        inspect,
        load,
        merge,
        model_card,
        ollama_modelfile,
        plan_quantize,
        quantize,
        report,
        run_quantize,
    )
    from phiquant.errors import PhiquantError
    from phiquant.evaluate.options import EvalOptions
    from phiquant.progress import RecordingReporter, Reporter
    from phiquant.runtime.runner import RunnerOptions
    from phiquant.runtime.sampling import SamplingOptions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phiquant' has no attribute {name!r}")
    target = importlib.import_module(module)
    value = target if module == f"phiquant.{name}" else getattr(target, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
