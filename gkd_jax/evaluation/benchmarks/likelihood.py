"""Log-likelihoods of continuations after a prompt, batched, for any model family.

A request is (prompt ids, [continuation ids, ...]); the answer is each continuation's summed
log-probability given the prompt, the way lm-eval-harness's `loglikelihood` scores multiple
choice. Everything goes through `LMFunctions.score` (prompts left-padded, continuations
right-padded, both masked), so a decoder-only model (prompt + continuation as one sequence) and
T5 (prompt to the encoder, continuation to the decoder) share this code.

When every continuation is one token (MMLU's " A" / " B" / " C" / " D"), the choices of a
prompt are read from one forward: score's first row predicts the first continuation token from
the prompt alone, so its log-softmax holds every choice (4x fewer forwards than one row per
choice).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.evaluation.benchmarks.batching import (
    bucket,
    fill_rows,
    left_pad,
    length_batches,
    right_pad,
)
from gkd_jax.models.lm import LMFunctions

Request = tuple[Sequence[int], Sequence[Sequence[int]]]  # (prompt ids, continuations' ids)


def next_token_logprobs(score: Callable, params, prompt, prompt_mask, candidates) -> jax.Array:
    """log p(candidates[b, c] | prompt b) [B, C] float32, from one forward per prompt."""
    first = candidates[:, :1]  # any token: row 0 of score's logits does not depend on it
    logits = score(params, prompt, prompt_mask, first, jnp.ones(first.shape, bool))  # [B, 1, V]
    logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)  # [B, V]
    return jnp.take_along_axis(logp, candidates, axis=-1)


def continuation_logprobs(score: Callable, params, prompt, prompt_mask, completion, mask):
    """Summed log p of each row's completion tokens [B] float32; padding (mask False) adds 0."""
    logits = score(params, prompt, prompt_mask, completion, mask).astype(jnp.float32)  # [B,N,V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(logp, completion[..., None], axis=-1)[..., 0]  # [B, N]
    return jnp.sum(jnp.where(mask, token, 0.0), axis=-1)


def encode_request(tokenizer, context: str, continuations: Sequence[str]) -> Request:
    """(context ids, continuation ids) as lm-eval-harness splits them: encode context +
    continuation whole and keep what follows the context's own encoding, so a tokenizer that
    merges across the boundary gives the tokens a model reads. A tokenizer that closes every
    encoding with a special token (T5's </s>) cannot be split so: its continuation is encoded
    alone, which is how T5 reads it anyway (the prompt, with </s>, to the encoder)."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    wholes = tokenizer([context + c for c in continuations], add_special_tokens=True)["input_ids"]
    conts = []
    for cont, whole in zip(continuations, wholes, strict=True):
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            conts.append(whole[len(ctx) :])
        else:
            conts.append(tokenizer(cont, add_special_tokens=False)["input_ids"])
    return ctx, conts


class Scorer:
    """Scores requests with one model: `scorer(requests) -> [log-probs [C] per request]`.

    Prompts longer than `max_prompt_len` keep their last tokens (lm-eval-harness's left
    truncation: the question survives, the first exemplar's start goes); `truncated` counts
    them. `log` gets a progress line about every `progress_every` seconds."""

    def __init__(
        self,
        params: Any,
        fns: LMFunctions,
        *,
        pad_id: int,
        batch_size: int = 16,
        max_prompt_len: int = 2048,
        log: Callable[[str], None] = print,
        progress_every: float = 30.0,
    ):
        self.params, self.pad_id, self.batch_size = params, pad_id, batch_size
        self.max_prompt_len, self.log, self.progress_every = max_prompt_len, log, progress_every
        self.truncated = 0
        self._next = jax.jit(functools.partial(next_token_logprobs, fns.score))
        self._cont = jax.jit(functools.partial(continuation_logprobs, fns.score))

    def __call__(self, requests: Sequence[Request]) -> list[np.ndarray]:
        prompts = [self._fit(p) for p, _ in requests]
        one_token = all(len(c) == 1 for _, conts in requests for c in conts)
        widths = {len(conts) for _, conts in requests}
        if one_token and len(widths) == 1:
            candidates = [[c[0] for c in conts] for _, conts in requests]
            return list(self._run(prompts, candidates, single=True))
        # One row per (prompt, continuation), regrouped per request afterwards.
        rows = [(i, c) for i, (_, conts) in enumerate(requests) for c in conts]
        totals = self._run([prompts[i] for i, _ in rows], [c for _, c in rows], single=False)
        out, at = [], 0
        for _, conts in requests:
            out.append(np.asarray(totals[at : at + len(conts)], np.float32))
            at += len(conts)
        return out

    def _fit(self, prompt: Sequence[int]) -> list[int]:
        if len(prompt) > self.max_prompt_len:
            self.truncated += 1
            return list(prompt[-self.max_prompt_len :])
        return list(prompt)

    def _run(self, prompts, targets, single: bool) -> list:
        """Per row: its candidates' log-probs [C] (`single`: `targets` are candidate ids) or its
        continuation's summed log-prob (`targets` are continuations)."""
        results: list = [None] * len(prompts)
        start = last = time.time()
        done = 0
        for idx in length_batches([len(p) for p in prompts], self.batch_size):
            rows = fill_rows(idx, self.batch_size)
            p, pm = left_pad([prompts[i] for i in rows], bucket(len(prompts[idx[0]])), self.pad_id)
            if single:
                cand = np.asarray([targets[i] for i in rows], np.int32)  # [B, C]
                values = np.asarray(self._next(self.params, p, pm, cand))
            else:
                n = bucket(max(len(targets[i]) for i in idx), minimum=1)
                c, cm = right_pad([targets[i] for i in rows], n, self.pad_id)
                values = np.asarray(self._cont(self.params, p, pm, c, cm))
            for j, i in enumerate(idx):
                results[i] = values[j]
            done += len(idx)
            if time.time() - last > self.progress_every or done == len(prompts):
                last = time.time()
                rows_are = "prompts" if single else "(prompt, choice) rows"
                self.log(
                    f"[benchmark] {done}/{len(prompts)} {rows_are} scored ({last - start:.1f}s)"
                )
        return results
