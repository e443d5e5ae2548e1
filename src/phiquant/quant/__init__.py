"""The quantization core: presets, llama.cpp's per-tensor rules, plans, quantizing rows through ggml.

    facts = model_facts_from_metadata(metadata)
    weights = imatrix_weights_for_model(read_imatrix(path), tensors)   # phiquant.imatrix.files
    plan = plan_quantization(tensors, facts, "Q4_K_M", QuantOptions(has_imatrix=bool(weights)))
    for tensor in plan.tensors:          # llama.cpp's output order
        if tensor.quantize:
            data = quantize_rows(rows_f32, tensor.target_type, weights.get(tensor.name),
                                 tensor_name=tensor.name)
        else:
            check_source_data(tensor.source_type, raw, tensor.name)   # then copy raw as is

Modules: types (presets, name parsing; ggml's types are phiquant.ggml.types), rules and preset_rules
(llama-quant.cpp's per-tensor rules as pure functions), plan (plan_quantization, QuantPlan), quantize
(threaded quantize_rows, CLI-compatible imatrix metadata), budget/budget_plan/budget_anchor (the size
budget's allocation), tensor_error (per-tensor quantization errors).  The kernels are phiquant.ggml's;
importance-matrix files are phiquant.imatrix.files'.

Results are byte-identical to llama.cpp's llama_model_quantize (tests/quant/test_oracle_*.py), except
where phiquant deliberately refuses what llama.cpp does silently or crashes on; see plan.py.
"""

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
from phiquant.quant.quantize import KVOverride, check_source_data, imatrix_kv_overrides, quantize_rows
from phiquant.quant.types import (
    PRESETS,
    GGMLType,
    LlamaFtype,
    Preset,
    parse_ggml_type,
    parse_preset,
)

__all__ = [
    "PRESETS",
    "Decision",
    "GGMLType",
    "KVOverride",
    "LlamaFtype",
    "ModelFacts",
    "Preset",
    "QuantOptions",
    "QuantPlan",
    "TensorDesc",
    "TensorPlan",
    "check_source_data",
    "imatrix_kv_overrides",
    "llama_tensor_order",
    "model_facts_from_metadata",
    "parse_ggml_type",
    "parse_preset",
    "plan_quantization",
    "quantize_rows",
]
