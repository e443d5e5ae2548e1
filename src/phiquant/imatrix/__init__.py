"""Importance matrices: llama.cpp's imatrix file formats (files), collection over llama.cpp's evaluation
(collect) and a run over a calibration text (run).  `--imatrix auto` is a workflow (phiquant.workflows.imatrix)."""
