"""Distillation losses for GKD: the generalized Jensen-Shannon divergence and masked reductions.

Everything here is a pure function over arrays so it can be jitted, vmapped and sharded freely.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

REDUCTIONS = ("sequence", "token")


def _kl(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """KL(p || q) over the last axis, from log-probabilities; terms with p == 0 count as 0."""
    p = jnp.exp(logp)  # [..., V]
    # Double `where`: a masked (-inf) entry gives (-inf) - (-inf) = NaN, and a single `where`
    # would still route 0 * NaN into the gradient.
    diff = jnp.where(p > 0, logp - logq, 0.0)  # [..., V]
    return jnp.sum(p * diff, axis=-1)  # [...]


def generalized_jsd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    beta: float,
    temperature: float = 1.0,
) -> jax.Array:
    """Generalized Jensen-Shannon divergence between teacher and student, per position.

    With p_T = softmax(teacher_logits / temperature), p_S = softmax(student_logits / temperature)
    and the mixture M = beta * p_T + (1 - beta) * p_S:

        JSD(beta) = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)        for 0 < beta < 1
        JSD(0)    = KL(p_T || p_S)   (forward KL)
        JSD(1)    = KL(p_S || p_T)   (reverse KL)

    The endpoints are special-cased because the formula above tends to 0 there (TRL semantics).

    Args:
      student_logits: [..., V], any float dtype.
      teacher_logits: [..., V], same shape. -inf entries (masked vocabulary) are allowed.
      beta: static Python float in [0, 1].
      temperature: > 0; both logits are divided by it before the softmax.

    Returns:
      float32 array of shape `student_logits.shape[:-1]`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {student_logits.shape} vs teacher {teacher_logits.shape}"
        )

    # Upcast before scaling so bf16 logits don't lose precision in the softmax.
    logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    logp_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)

    if beta == 0.0:
        return _kl(logp_t, logp_s)
    if beta == 1.0:
        return _kl(logp_s, logp_t)

    # log M in log space: avoids underflow of small probabilities in the mixture. logaddexp has a
    # NaN gradient when both inputs are -inf; such entries have p_T = p_S = 0, so their log M is
    # never used (see _kl) and any finite stand-in will do.
    both_masked = jnp.isneginf(logp_t) & jnp.isneginf(logp_s)  # [..., V]
    log_m = jnp.logaddexp(
        jnp.where(both_masked, 0.0, math.log(beta) + logp_t),
        jnp.where(both_masked, 0.0, math.log1p(-beta) + logp_s),
    )  # [..., V]
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)


def masked_sum_count(
    values: jax.Array, mask: jax.Array, reduction: str
) -> tuple[jax.Array, jax.Array]:
    """Masked (sum, count) of per-token `values` [B, T] so that loss = sum / count.

    Pairs are additive: summing (sum, count) over row-wise micro-batches or devices gives exactly
    the full-batch loss.

      "token":    sum = Σ values * mask, count = Σ mask (global token mean, as in TRL).
      "sequence": mean over each row's masked tokens, then over rows (the GKD paper). Rows with
                  no masked tokens are skipped entirely rather than counted as a zero.

    Returns float32 scalars (sum, count).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    mask = mask.astype(jnp.float32)  # [B, T]
    # Padding positions may hold NaN/inf (e.g. from -inf logits); 0 * NaN would poison the sum.
    values = jnp.where(mask > 0, values.astype(jnp.float32), 0.0) * mask  # [B, T]

    if reduction == "token":
        return jnp.sum(values), jnp.sum(mask)

    row_count = jnp.sum(mask, axis=-1)  # [B]
    row_mean = jnp.sum(values, axis=-1) / jnp.maximum(row_count, 1.0)  # [B]
    nonempty = row_count > 0  # [B]
    return jnp.sum(jnp.where(nonempty, row_mean, 0.0)), jnp.sum(nonempty.astype(jnp.float32))


def mean_from_sum_count(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 (not NaN) when count is 0 (total is then 0 too)."""
    return total / jnp.maximum(count, 1.0)


def masked_mean(values: jax.Array, mask: jax.Array, reduction: str) -> jax.Array:
    """Masked mean of `values` [B, T] under `reduction` (see `masked_sum_count`)."""
    return mean_from_sum_count(*masked_sum_count(values, mask, reduction))
