"""The quantization core: ggml kernel binding, type tables, llama.cpp's per-tensor rules, imatrix I/O.

    plan = plan_quantization(tensors, facts, "Q4_K_M", QuantOptions(has_imatrix=True))
    for tensor in plan.tensors:
        if tensor.quantize:
            data = quantize_rows(rows, tensor.target_type, weights.get(tensor.name))
"""

from phiquant.quant.imatrix import (
    ImatrixEntry,
    ImportanceMatrix,
    imatrix_weights_for_model,
    read_imatrix,
    write_imatrix,
)
from phiquant.quant.plan import (
    Decision,
    ModelFacts,
    QuantOptions,
    QuantPlan,
    TensorDesc,
    TensorPlan,
    llama_tensor_order,
    model_facts_from_metadata,
    plan_quantization,
)
from phiquant.quant.quantize import KVOverride, imatrix_kv_overrides, quantize_rows
from phiquant.quant.types import (
    PRESETS,
    GGMLType,
    LlamaFtype,
    Preset,
    parse_ggml_type,
    parse_preset,
)

__all__ = [
    "PRESETS", "Decision", "GGMLType", "ImatrixEntry", "ImportanceMatrix", "KVOverride", "LlamaFtype",
    "ModelFacts", "Preset", "QuantOptions", "QuantPlan", "TensorDesc", "TensorPlan", "imatrix_kv_overrides",
    "imatrix_weights_for_model", "llama_tensor_order", "model_facts_from_metadata", "parse_ggml_type",
    "parse_preset", "plan_quantization", "quantize_rows", "read_imatrix", "write_imatrix",
]
