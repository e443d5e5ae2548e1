"""The one native binding: ggml as llama-cpp-python ships it, through ctypes.

library.py  finding and loading libggml-base, libggml-cpu and libggml (one loader)
types.py    enum ggml_type and each type's block layout: the one place a type id is spelled
kernels.py  quantization kernels, row sizes, dequantization (libggml-base)
graph.py    compute-graph tensors as llama.cpp's evaluation callback sees them
devices.py  the backend registry: which accelerators exist and their free memory

Every binding has one shape: the C prototype as a comment, argtypes/restype, a typed Python wrapper.
Nothing here imports from the rest of phiquant except errors.
"""
