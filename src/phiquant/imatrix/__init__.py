"""Importance matrices computed by phiquant: collection over llama.cpp's evaluation (collect), the
calibration text and the cache that `quantize --imatrix auto` uses (auto)."""
