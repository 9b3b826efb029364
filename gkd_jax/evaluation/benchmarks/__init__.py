"""Held-out benchmarks any checkpoint can be scored on (the paper's instruction-tuning
evaluation): MMLU by the log-likelihood of the answer letters (mmlu.py, through
likelihood.py's batched scorer) and BIG-Bench Hard by greedy few-shot generation and exact
match (bbh.py). runner.py is the `python -m gkd_jax.evaluate --benchmark=...` entry; data are
read from local files in each benchmark's own released format, never downloaded."""
