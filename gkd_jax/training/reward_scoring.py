"""The host side of a policy-gradient run (rl_step.py): each prompt repeated rl.num_samples
times, and the rewards of the decoded samples, computed between sampling and the jitted step.

Rewards are Python functions on text (rewards.py), so they run here, outside jit: the step
takes their values as one more batch array, "rewards" [B].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gkd_jax.objectives.rewards import get_reward

INDEX = "index"  # the training data's row numbers, carried in each batch to find references


def repeat_prompts(batch: dict[str, np.ndarray], num_samples: int) -> dict[str, np.ndarray]:
    """Each row num_samples times in a row: rows i*k .. i*k + k-1 are prompt i's samples."""
    return {key: np.repeat(v, num_samples, axis=0) for key, v in batch.items()}


class RewardScorer:
    """config.rl.reward of decoded completions: `scorer(index [b], tokens [b, N], mask [b, N])
    -> rewards [b] float32`, `index` the rows' positions in the training split."""

    def __init__(self, spec: str, tokenizer, prompts: Sequence[str], references: Sequence[Any]):
        self.spec, self.fn = spec, get_reward(spec)
        self.tokenizer, self.prompts, self.references = tokenizer, prompts, references

    def texts(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """The completions as the evaluation decodes them (special tokens, stop token, dropped)."""
        return [
            self.tokenizer.decode(t[m.astype(bool)], skip_special_tokens=True)
            for t, m in zip(tokens, mask, strict=True)
        ]

    def __call__(self, index: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        index = [int(i) for i in index]
        prompts = [self.prompts[i] for i in index]
        references = [self.references[i] for i in index]
        values = self.fn(prompts, self.texts(tokens, mask), references)
        out = np.asarray(values, dtype=np.float32)
        if out.shape != (len(index),):
            raise ValueError(
                f"reward {self.spec!r} returned shape {out.shape} for {len(index)} completions; "
                "a reward returns one float per completion"
            )
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out))[:5].tolist()
            raise ValueError(
                f"reward {self.spec!r} returned non-finite values (rows {bad}); a reward must "
                "give every completion a finite value, bad inputs included"
            )
        return out
