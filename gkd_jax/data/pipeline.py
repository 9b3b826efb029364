"""Token ids -> fixed-shape batches: prompts left-padded, completions right-padded.

Fixed shapes keep every jitted function at one compilation. Over-long examples are never
silently cut: `pack` raises with the count and the first offending index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def left_pad(
    rows: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, length] int32, mask [N, length] bool): each row right-aligned, pad_id before it,
    the layout of every prompt the models read (rows of at most `length` ids)."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = True
    return ids, mask


def pack(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    max_prompt_len: int,
    max_completion_len: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Arrays prompt [N, P] (left pad) and completion [N, C] (right pad) with their masks."""
    too_long = [
        i
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True))
        if len(p) > max_prompt_len or len(c) > max_completion_len or not p or not c
    ]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"{len(too_long)} of {len(prompt_ids)} examples do not fit max_prompt_len="
            f"{max_prompt_len} / max_completion_len={max_completion_len} (completion incl. its "
            f"stop token) or are empty; first is #{i}: prompt {len(prompt_ids[i])} tokens, "
            f"completion {len(completion_ids[i])} tokens. Raise the limits in the config."
        )
    n = len(prompt_ids)
    prompt, prompt_mask = left_pad(prompt_ids, max_prompt_len, pad_id)
    completion = np.full((n, max_completion_len), pad_id, np.int32)
    completion_mask = np.zeros((n, max_completion_len), bool)
    for i, c in enumerate(completion_ids):
        completion[i, : len(c)] = c
        completion_mask[i, : len(c)] = True
    return dict(
        prompt=prompt,
        prompt_mask=prompt_mask,
        completion=completion,
        completion_mask=completion_mask,
    )


def pack_split(split, config, pad_id: int) -> dict[str, np.ndarray]:
    """`pack` a task's Split (data/task_types.py) to a run's fixed shapes: prompts of
    config.data.max_prompt_len tokens, completions of config.max_new_tokens."""
    return pack(
        split.prompt_ids,
        split.completion_ids,
        max_prompt_len=config.data.max_prompt_len,
        max_completion_len=config.max_new_tokens,
        pad_id=pad_id,
    )


def encode(
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_prompt_len: int,
    max_completion_len: int,
) -> dict[str, np.ndarray]:
    """Tokenize text pairs (no special tokens added; EOS appended to completions) and `pack`."""
    eos = tokenizer.eos_token_id
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return pack(
        p_ids,
        [[*c, eos] for c in c_ids],
        max_prompt_len=max_prompt_len,
        max_completion_len=max_completion_len,
        pad_id=tokenizer.pad_token_id,
    )


def batches(
    data: dict[str, np.ndarray],
    batch_size: int,
    seed: int,
    start: int = 0,
    rows: np.ndarray | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches of exactly `batch_size` rows (a new permutation per epoch),
    from batch number `start` on: a resumed run gets the batches it would have seen.

    With `rows` (indices into the batch, e.g. `distributed.host_rows`), only those rows of
    each batch are gathered: every host draws the same permutation and takes its part."""
    n = len(next(iter(data.values())))
    if n < batch_size:
        raise ValueError(f"dataset has {n} examples, fewer than batch_size={batch_size}")
    if start < 0:
        raise ValueError(f"start={start} must be >= 0")
    per_epoch = n // batch_size
    rng = np.random.default_rng(seed)
    # Skip whole epochs by drawing (not applying) their permutations: the generator's state
    # after e epochs is all that carries over, and a permutation is cheap next to a batch.
    for _ in range(start // per_epoch):
        rng.permutation(n)
    skip = start % per_epoch
    while True:
        order = rng.permutation(n)
        for first in range(skip * batch_size, n - batch_size + 1, batch_size):
            idx = order[first : first + batch_size]
            if rows is not None:
                idx = idx[rows]
            yield {k: v[idx] for k, v in data.items()}
        skip = 0


def in_order(data: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order; the last batch is padded by repeating row 0 (with 'valid')."""
    n = len(next(iter(data.values())))
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = idx < n
        idx = np.where(valid, idx, 0)
        yield {**{k: v[idx] for k, v in data.items()}, "valid": valid}
