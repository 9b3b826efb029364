"""Evaluation: decoding a split and scoring it, the paper's metrics, reply statistics, the lmbda
comparison, held-out benchmarks."""
