"""What strings the engine together: each module is one thing a user asks for, end to end.

job.py       a quantization run: open a source, plan its files, write them in one pass
convert.py   `convert`: a checkpoint directory to one GGUF file
quantize.py  `quantize`: presets (a ladder in one pass) or a size budget; `quantize --eval`
budget/      the budget's measurements: per-tensor errors, calibration probes, the fit, the profile cache
imatrix.py   importance matrices of any source; `--imatrix auto` with its cache
as_gguf.py   any source as a GGUF file (a checkpoint converted, cached or temporary)
report.py    evaluate every file of a model and write the report
demo.py      the whole tool on the bundled model
batch.py     `phiquant batch`: a matrix of models and ladders on Ray (batch_jobs.py: the job file, resuming)
"""
