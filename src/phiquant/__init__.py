"""phiquant: Microsoft Phi models from Hugging Face checkpoints to quantized llama.cpp GGUF files."""

from __future__ import annotations

__version__ = "0.1.0"
