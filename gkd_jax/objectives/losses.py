"""Distillation losses for GKD: the generalized Jensen-Shannon divergence and masked reductions.

Everything here is a pure function over arrays so it can be jitted, vmapped and sharded freely.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

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
    return jsd_from_log_probs(logp_s, logp_t, beta=beta)


def jsd_from_log_probs(logp_s: jax.Array, logp_t: jax.Array, *, beta: float) -> jax.Array:
    """The generalized JSD summed over the last axis of normalized log-probabilities [..., V].

    Every term is per vocabulary entry, so on a vocabulary shard this gives that shard's share of
    the sum: the vocab-parallel loss psums it over the shards."""
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


def total_variation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    """Total variation distance between teacher and student, per position.

        TV = 0.5 * sum_v |p_T(v) - p_S(v)|,   in [0, 1], symmetric, 0 iff p_T == p_S

    with p = softmax(logits / temperature). The divergence of the f-distill baseline (Wen et al.,
    2023). TV is not differentiable where p_T(v) == p_S(v); the gradient there is a subgradient
    (JAX's d|x|/dx is 1 at 0, and float rounding picks the sign when the two are within an ulp),
    bounded like every TV gradient: |d TV / d logit_v| <= p_S(v) / temperature. So, unlike the
    KLs, it need not vanish as the student reaches the teacher.

    Args and returns as `generalized_jsd` (shapes [..., V] -> [...], float32 output).
    """
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {student_logits.shape} vs teacher {teacher_logits.shape}"
        )
    # TV is linear in the probabilities, so no log space is needed; upcast first (bf16 logits).
    p_s = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)  # [..., V]
    p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)  # [..., V]
    return 0.5 * jnp.sum(jnp.abs(p_t - p_s), axis=-1)  # [...]


# The divergences of the paper's experiments, by the names its tables use. "fkl" and "rkl" are the
# endpoints of generalized_jsd (beta = 0 and 1), "jsd" takes the caller's beta, "tv" has none.
DIVERGENCES = ("jsd", "fkl", "rkl", "tv")
FIXED_BETAS = {"fkl": 0.0, "rkl": 1.0}

DivergenceFn = Callable[..., jax.Array]  # (student_logits, teacher_logits, *, temperature) -> [...]


def get_divergence(name: str, *, beta: float | None = None) -> DivergenceFn:
    """The per-token divergence `name` as fn(student_logits, teacher_logits, *, temperature=1.0).

      "jsd": generalized_jsd with `beta` (required, in [0, 1]).
      "fkl": forward KL(p_T || p_S) = generalized_jsd(beta=0).
      "rkl": reverse KL(p_S || p_T) = generalized_jsd(beta=1).
      "tv":  total_variation.

    Every check is plain Python, so a bad config fails here, before anything compiles. A `beta`
    that contradicts the name ("fkl" with beta=0.5, any beta with "tv") is an error rather than
    silently ignored: it means the run is not the experiment its config describes.
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; expected one of {DIVERGENCES}")
    if name == "tv":
        if beta is not None:
            raise ValueError(f"beta={beta!r} does not apply to divergence 'tv'; leave beta unset")
        return total_variation
    if name in FIXED_BETAS:
        fixed = FIXED_BETAS[name]
        if beta is not None and beta != fixed:
            raise ValueError(
                f"divergence {name!r} is generalized_jsd with beta={fixed}, got beta={beta!r}; "
                "leave beta unset or use divergence 'jsd'"
            )
        beta = fixed
    elif beta is None:
        raise ValueError("divergence 'jsd' needs beta (in [0, 1])")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return functools.partial(generalized_jsd, beta=float(beta))


def divergence(
    name: str,
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    beta: float | None = None,
    temperature: float = 1.0,
) -> jax.Array:
    """`get_divergence(name, beta=beta)(student_logits, teacher_logits, temperature=...)`."""
    return get_divergence(name, beta=beta)(student_logits, teacher_logits, temperature=temperature)


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
