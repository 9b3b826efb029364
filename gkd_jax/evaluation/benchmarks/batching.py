"""Rows of different lengths -> fixed-shape padded batches, for scoring and for generation.

Rows are sorted by length and each batch is padded to the next power of two of its longest row
(a "bucket"), and to exactly `batch_size` rows: a jitted function then compiles once per
bucket (a handful), not once per prompt length, and a batch of short prompts does not pay for
the longest prompt of the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

MIN_BUCKET = 16


def bucket(length: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= length (and >= minimum)."""
    return max(minimum, 1 << max(0, length - 1).bit_length())


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Row indices in batches of at most `batch_size`, longest rows first (the first batch
    compiles the largest bucket, so an out-of-memory shows at once, not at the end)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def fill_rows(idx: np.ndarray, batch_size: int) -> np.ndarray:
    """`idx` padded to `batch_size` entries by repeating its first row (results discarded)."""
    return np.concatenate([idx, np.full(batch_size - len(idx), idx[0], idx.dtype)])


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int):
    """(ids [B, length] int32, mask [B, length] bool), each row at the right end: the layout
    LMFunctions.score and the sampler take prompts in."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, length - len(row) :], mask[i, length - len(row) :] = row, True
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int):
    """(ids [B, length] int32, mask [B, length] bool), each row at the left end: completions."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, True
    return ids, mask
