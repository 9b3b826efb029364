"""Sparse (top-K + tail) teachers: the GKD divergences from the teacher's K most likely tokens per
position and one bin for the rest of its mass, against the student's full distribution.

A teacher summarized this way can be scored once and cached (`python -m gkd_jax.teacher_cache`)
or run elsewhere, instead of moving [B, T, V] logits: per position it is K ids (int32), K
log-probabilities (float32 or bfloat16) and one float32 log tail mass.

The math. Per position, with the tempered distributions of losses.generalized_jsd (the teacher's
logits first divided by gkd.teacher_temperature tau_T, as step.Objective does):

    p_T = softmax(z_T / (tau_T * tau)),   p_S = softmax(z_S / tau),   tau = gkd.loss_temperature

let S be the teacher's top-K ids (the K largest p_T(i), distinct). Both distributions are
collapsed onto the K + 1 bins S ∪ {tail}:

    t_i = p_T(i),  s_i = p_S(i)                                        for i in S
    t_tail = 1 - sum_{i in S} p_T(i),   s_tail = sum_{j not in S} p_S(j) = 1 - sum_{i in S} p_S(i)

and any divergence of losses.py is taken between the (K+1)-way distributions t and s:

    FKL    = KL(t || s) = sum_{b in S ∪ {tail}} t_b (log t_b - log s_b)            (beta = 0)
    RKL    = KL(s || t) = sum_b s_b (log s_b - log t_b)                              (beta = 1)
    JSD(beta) = beta KL(t || m) + (1 - beta) KL(s || m),   m = beta t + (1 - beta) s
    TV     = 1/2 sum_b |t_b - s_b|

with the convention 0 log 0 = 0 (a bin with no mass counts 0), as in losses._kl.

Properties. K = V: the tail bins are empty (t_tail = s_tail = 0) and every divergence equals the
full one exactly. K < V: collapsing outcomes never increases an f-divergence (data processing),
and KL, JSD(beta) and TV are f-divergences, so the sparse loss is a lower bound of the full
loss; its gradient pushes the student's mass on S to the teacher's and its tail mass as a
whole to the teacher's tail mass, with no pull on how the tail is spread.

How it is computed, in log space and float32 whatever the input dtypes:
  log s_i     = log_softmax(z_S / tau)[i]               (a gather)
  log s_tail  = logsumexp_{j not in S} log p_S(j)       (a masked logsumexp: no cancellation,
                                                          finite however small the tail)
  log t_tail  = given with the top-K when the teacher's full logits were at hand (the live
                teacher in step.py and the cache both store logsumexp_{j not in S} log p_T(j),
                exact however close the top-K mass is to 1); for a source that sends top-K
                log-probs only, log1mexp(min(L, 0)) with L = logsumexp_{i in S} log t_i,
                log1mexp(x) = log(-expm1(x)) for x > -log 2, else log1p(-exp(x)), floored at
                log(TAIL_FLOOR): a top-K mass that rounds to 1 would make the reverse KL
                infinite although the true tail is merely below float32's resolution
                (K = V: -inf, the tail is empty).
  t           = the K + 1 log-masses renormalized by their logsumexp (a no-op up to rounding
                for float32 inputs; for bfloat16 log-probs it spreads the rounding error of
                their sum over all bins instead of leaving t unnormalized).

Memory per token of a teacher summary: K * (4 + b) + 4 bytes (b = 4 float32, 2 bfloat16): for
K = 64, 516 B (float32) or 388 B (bfloat16), against V * b for the full logits: 607,744 B
(float32) or 303,872 B (bfloat16) at Qwen's V = 151,936, ~1,180x and ~780x more.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from gkd_jax.objectives.losses import DIVERGENCES, FIXED_BETAS, jsd_from_log_probs

TAIL_FLOOR = 2.0**-24  # float32's relative resolution of a mass near 1 (see the docstring)


def bytes_per_token(k: int, logp_bytes: int) -> int:
    """Bytes of one position's teacher summary: K int32 ids, K log-probs, one float32 tail."""
    return k * (4 + logp_bytes) + 4


def _outside(ids: jax.Array, vocab: int) -> jax.Array:
    """[..., V] bool: True at the vocabulary entries that are not among ids [..., K]."""
    flat = ids.reshape(-1, ids.shape[-1])  # [N, K]
    rows = jnp.arange(flat.shape[0])[:, None]  # [N, 1]
    inside = jnp.zeros((flat.shape[0], vocab), bool).at[rows, flat].set(True)  # [N, V]
    return ~inside.reshape(*ids.shape[:-1], vocab)


def log_mass_outside(logp: jax.Array, ids: jax.Array) -> jax.Array:
    """log sum_{j not in ids} exp(logp_j) [...] for log-probabilities logp [..., V] and ids
    [..., K]; -inf (with a zero gradient, not NaN) where ids cover the whole vocabulary."""
    out = _outside(ids, logp.shape[-1])  # [..., V]
    nonempty = jnp.any(out, axis=-1)  # [...]
    # Double `where`: a row with an empty tail gets a finite stand-in, so its logsumexp and
    # gradient are finite, and the outer `where` sends that row -inf and a zero gradient.
    x = jnp.where(out, logp, -jnp.inf)
    x = jnp.where(nonempty[..., None], x, 0.0)  # [..., V]
    return jnp.where(nonempty, jax.nn.logsumexp(x, axis=-1), -jnp.inf)


def top_k_log_probs(
    logits: jax.Array, k: int, *, temperature: float | jax.Array = 1.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A teacher's summary from its logits [..., V]: (ids [..., K] int32, log-probs [..., K]
    float32, log tail mass [...] float32) of softmax(logits / temperature), ids by decreasing
    probability. No gradient flows to the logits."""
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-K needs 1 <= K <= V, got K={k} for V={vocab}")
    logp = jax.nn.log_softmax(lax.stop_gradient(logits).astype(jnp.float32) / temperature, -1)
    logp_k, ids = lax.top_k(logp, k)  # [..., K]
    return ids.astype(jnp.int32), logp_k, log_mass_outside(logp, ids)


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler's split at -log 2)."""
    x = jnp.minimum(x, 0.0)
    near_zero = x > -math.log(2.0)
    # Each branch gets an argument that is safe for it, so neither side's gradient is NaN.
    a = jnp.where(near_zero, x, -1.0)
    b = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(b)))


def tail_from_top_k(logp_k: jax.Array, vocab: int) -> jax.Array:
    """log(1 - sum exp(logp_k)) [...] from top-K log-probabilities alone [..., K] (a source that
    sends no tail), floored at log(TAIL_FLOOR) (see the module docstring); -inf when K = V,
    where the tail is empty whatever the rounding of the K masses' sum."""
    if logp_k.shape[-1] >= vocab:
        return jnp.full(logp_k.shape[:-1], -jnp.inf, jnp.float32)
    tail = log1mexp(jax.nn.logsumexp(logp_k.astype(jnp.float32), axis=-1))
    return jnp.maximum(tail, math.log(TAIL_FLOOR))


def bins(
    student_logits: jax.Array,
    teacher_ids: jax.Array,
    teacher_logp: jax.Array,
    teacher_log_tail: jax.Array | None = None,
    *,
    temperature: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(log s, log t) [..., K + 1]: student and teacher collapsed onto the teacher's top-K ids
    and the tail (last entry). The teacher's inputs get no gradient."""
    vocab, k = student_logits.shape[-1], teacher_ids.shape[-1]
    if (
        teacher_ids.shape != teacher_logp.shape
        or teacher_ids.shape[:-1] != (student_logits.shape[:-1])
    ):
        raise ValueError(
            f"shapes differ: student logits {student_logits.shape}, teacher ids "
            f"{teacher_ids.shape}, log-probs {teacher_logp.shape}; expected [..., V], [..., K] "
            "and [..., K]"
        )
    if k > vocab:
        raise ValueError(f"teacher top-K has K={k} > the student's vocabulary V={vocab}")
    ids = lax.stop_gradient(teacher_ids).astype(jnp.int32)
    logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    s_top = jnp.take_along_axis(logp_s, ids, axis=-1)  # [..., K]
    log_s = jnp.concatenate([s_top, log_mass_outside(logp_s, ids)[..., None]], axis=-1)

    t_top = lax.stop_gradient(teacher_logp).astype(jnp.float32)  # [..., K]
    if teacher_log_tail is None:
        t_tail = tail_from_top_k(t_top, vocab)
    else:
        t_tail = lax.stop_gradient(teacher_log_tail).astype(jnp.float32)
    log_t = jax.nn.log_softmax(jnp.concatenate([t_top, t_tail[..., None]], axis=-1), axis=-1)
    return log_s, log_t  # [..., K + 1] each


def sparse_divergence(
    name: str,
    student_logits: jax.Array,
    teacher_ids: jax.Array,
    teacher_logp: jax.Array,
    teacher_log_tail: jax.Array | None = None,
    *,
    beta: float | None = None,
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    """Divergence `name` ("jsd" with `beta`, "fkl", "rkl", "tv"; losses.get_divergence's names)
    per position [...] float32 between the teacher's top-K + tail and the student's logits
    [..., V] collapsed onto the same K + 1 bins (module docstring).

    Args:
      student_logits: [..., V], any float dtype; divided by `temperature` before the softmax.
      teacher_ids: [..., K] int, distinct per position, in [0, V) (top_k_log_probs's).
      teacher_logp: [..., K] the teacher's normalized log-probabilities at those ids (already
        tempered: top_k_log_probs(teacher_logits / teacher_temperature, temperature=tau)).
      teacher_log_tail: [...] log of the teacher's remaining mass; None derives it from
        teacher_logp (tail_from_top_k).
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; expected one of {DIVERGENCES}")
    log_s, log_t = bins(
        student_logits, teacher_ids, teacher_logp, teacher_log_tail, temperature=temperature
    )
    if name == "tv":
        return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_t) - jnp.exp(log_s)), axis=-1)
    beta = FIXED_BETAS.get(name, beta)
    if beta is None or not 0.0 <= beta <= 1.0:
        raise ValueError(f"divergence {name!r} needs beta in [0, 1], got {beta!r}")
    return jsd_from_log_probs(log_s, log_t, beta=float(beta))
