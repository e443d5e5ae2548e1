"""Budgeted quantization (`--max-size`, `--target-bpw`): measure the model, then plan under the budget.

calibration.py  probe files, their KL divergences and the sensitivity fit; the profile's cache format
job.py          the measured profile of an opened model (cached) and the plan for a request

The planning math itself is engine code: quant.budget (allocation), quant.budget_plan, quant.budget_anchor.
"""
