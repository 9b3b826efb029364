"""Tests for gkd_jax.objectives.losses against an independent float64 numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import central_differences
from scipy.special import rel_entr

from gkd_jax.objectives.losses import (
    REDUCTIONS,
    generalized_jsd,
    masked_mean,
    masked_sum_count,
    mean_from_sum_count,
)

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
TEMPERATURES = [0.5, 1.0, 2.0]
SHAPES = [(11,), (2, 5, 11), (3, 7)]


# ---------------------------------------------------------------- numpy reference (float64)


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_kl(p, q):
    """Σ p log(p/q) in probability space; 0 log 0 = 0."""
    pos = p > 0
    ratio = np.where(pos, p, 1.0) / np.where(pos, q, 1.0)
    with np.errstate(divide="ignore"):
        return np.sum(np.where(pos, p * np.log(ratio), 0.0), axis=-1)


def ref_jsd(student, teacher, beta, temperature=1.0):
    ps = ref_softmax(np.asarray(student, np.float64) / temperature)
    pt = ref_softmax(np.asarray(teacher, np.float64) / temperature)
    if beta == 0:
        return ref_kl(pt, ps)
    if beta == 1:
        return ref_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m)


def random_logits(shape, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- generalized_jsd


def test_reference_endpoints_match_scipy():
    s, t = random_logits((4, 9), 0), random_logits((4, 9), 1)
    ps, pt = ref_softmax(s), ref_softmax(t)
    np.testing.assert_allclose(ref_jsd(s, t, 0.0), rel_entr(pt, ps).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(ref_jsd(s, t, 1.0), rel_entr(ps, pt).sum(-1), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_matches_reference(shape, beta, temperature):
    s, t = random_logits(shape, 10), random_logits(shape, 11)
    out = generalized_jsd(jnp.asarray(s), jnp.asarray(t), beta=beta, temperature=temperature)
    assert out.shape == shape[:-1]
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_jsd(s, t, beta, temperature), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_nonnegative_and_zero_when_equal(beta):
    s, t = random_logits((3, 4, 13), 2), random_logits((3, 4, 13), 3)
    out = generalized_jsd(jnp.asarray(s), jnp.asarray(t), beta=beta)
    assert np.all(np.asarray(out) >= 0)
    same = generalized_jsd(jnp.asarray(s), jnp.asarray(s), beta=beta)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_endpoints_are_forward_and_reverse_kl():
    s, t = jnp.asarray(random_logits((5, 8), 4)), jnp.asarray(random_logits((5, 8), 5))
    # KL(p_T||p_S) at beta=0 is KL(p_S||p_T) at beta=1 with the arguments swapped.
    np.testing.assert_allclose(
        generalized_jsd(s, t, beta=0.0), generalized_jsd(t, s, beta=1.0), rtol=1e-6
    )


@pytest.mark.parametrize("beta", BETAS)
def test_neg_inf_logits_stay_finite(beta):
    s, t = random_logits((2, 3, 10), 6), random_logits((2, 3, 10), 7)
    s[..., [0, 4]] = -np.inf  # masked vocab ids, present in both
    t[..., [0, 4]] = -np.inf
    fn = functools.partial(generalized_jsd, beta=beta, temperature=0.7)
    out = fn(jnp.asarray(s), jnp.asarray(t))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref_jsd(s, t, beta, 0.7), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: fn(x, jnp.asarray(t)).sum())(jnp.asarray(s))
    assert np.all(np.isfinite(grad))
    # Masking vocab ids must equal dropping them from the vocabulary, value and gradient alike.
    keep = [i for i in range(10) if i not in (0, 4)]
    s_kept, t_kept = jnp.asarray(s[..., keep]), jnp.asarray(t[..., keep])
    np.testing.assert_allclose(out, fn(s_kept, t_kept), rtol=1e-6, atol=1e-7)
    grad_kept = jax.grad(lambda x: fn(x, t_kept).sum())(s_kept)
    np.testing.assert_allclose(grad[..., keep], grad_kept, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grad[..., [0, 4]], 0.0)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9])
def test_teacher_only_neg_inf(beta):
    # Teacher gives zero mass to ids the student still covers: finite for beta < 1.
    s, t = random_logits((3, 9), 16), random_logits((3, 9), 17)
    t[..., [1, 2]] = -np.inf
    fn = functools.partial(generalized_jsd, beta=beta)
    out = fn(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(out, ref_jsd(s, t, beta), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: fn(x, jnp.asarray(t)).sum())(jnp.asarray(s))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_grad_matches_finite_differences(beta):
    shape, temperature = (2, 3, 7), 1.5
    s, t = random_logits(shape, 8), random_logits(shape, 9)
    w = np.random.default_rng(10).standard_normal(shape[:-1])  # weights so positions differ

    def ref_loss(x):
        return np.sum(w * ref_jsd(x, t, beta, temperature))

    fd = central_differences(ref_loss, s)

    def loss(x):
        return jnp.sum(
            jnp.asarray(w, jnp.float32) * generalized_jsd(x, t, beta=beta, temperature=temperature)
        )

    grad = jax.grad(loss)(jnp.asarray(s))
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


def test_bf16_inputs():
    s, t = random_logits((2, 5, 11), 12), random_logits((2, 5, 11), 13)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    for beta in (0.0, 0.5, 1.0):
        out = generalized_jsd(s16, t16, beta=beta)
        assert out.dtype == jnp.float32
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ref_jsd(s, t, beta), rtol=2e-2, atol=2e-2)
        # The only error source is input rounding: exact on the bf16-rounded logits.
        rounded = ref_jsd(np.asarray(s16, np.float32), np.asarray(t16, np.float32), beta)
        np.testing.assert_allclose(out, rounded, rtol=1e-5, atol=1e-6)


def test_jit():
    s, t = jnp.asarray(random_logits((2, 5, 11), 14)), jnp.asarray(random_logits((2, 5, 11), 15))
    fn = jax.jit(functools.partial(generalized_jsd, beta=0.5, temperature=2.0))
    np.testing.assert_allclose(fn(s, t), ref_jsd(s, t, 0.5, 2.0), rtol=1e-5, atol=1e-6)
    # temperature may also be a traced value
    traced = jax.jit(lambda a, b, tau: generalized_jsd(a, b, beta=0.9, temperature=tau))
    np.testing.assert_allclose(traced(s, t, 0.5), ref_jsd(s, t, 0.9, 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"beta": 0.5, "temperature": 0.0}, "temperature"),
        ({"beta": 0.5, "temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments(kwargs, name):
    x = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match=name):
        generalized_jsd(x, x, **kwargs)


# ---------------------------------------------------------------- masked reductions


def ref_masked(values, mask, reduction):
    values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
    if reduction == "token":
        return float(values[mask].sum()), float(mask.sum())
    row_means = [values[b][mask[b]].mean() for b in range(len(values)) if mask[b].any()]
    return float(sum(row_means)), float(len(row_means))


def make_batch():
    rng = np.random.default_rng(20)
    values = rng.uniform(0.0, 3.0, (6, 5)).astype(np.float32)
    mask = rng.uniform(size=(6, 5)) < 0.6
    mask[0] = [True, True, True, True, True]
    mask[2] = False  # empty row
    mask[4] = [False, False, False, False, True]
    return values, mask


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask_dtype", [bool, np.int32, np.float32])
def test_masked_sum_count_matches_reference(reduction, mask_dtype):
    values, mask = make_batch()
    total, count = masked_sum_count(
        jnp.asarray(values), jnp.asarray(mask.astype(mask_dtype)), reduction
    )
    assert total.dtype == count.dtype == jnp.float32
    assert total.shape == count.shape == ()
    ref_total, ref_count = ref_masked(values, mask, reduction)
    np.testing.assert_allclose(total, ref_total, rtol=1e-6)
    assert float(count) == ref_count
    np.testing.assert_allclose(
        masked_mean(jnp.asarray(values), jnp.asarray(mask), reduction),
        ref_total / ref_count,
        rtol=1e-6,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("split", [2, 3, 5])
def test_micro_batch_sums_equal_full_batch(reduction, split):
    values, mask = make_batch()
    full = masked_mean(jnp.asarray(values), jnp.asarray(mask), reduction)
    parts = [
        masked_sum_count(jnp.asarray(values[rows]), jnp.asarray(mask[rows]), reduction)
        for rows in (slice(0, split), slice(split, None))
    ]
    total = sum(p[0] for p in parts)
    count = sum(p[1] for p in parts)
    np.testing.assert_allclose(mean_from_sum_count(total, count), full, rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_mask_gives_zero(reduction):
    values = jnp.ones((3, 4))
    mask = jnp.zeros((3, 4), bool)
    total, count = masked_sum_count(values, mask, reduction)
    assert float(total) == 0.0 and float(count) == 0.0
    assert float(masked_mean(values, mask, reduction)) == 0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nan_in_padding_does_not_leak(reduction):
    values, mask = make_batch()
    values[~mask] = np.nan
    out = masked_mean(jnp.asarray(values), jnp.asarray(mask), reduction)
    ref_total, ref_count = ref_masked(np.where(mask, values, 0.0), mask, reduction)
    np.testing.assert_allclose(out, ref_total / ref_count, rtol=1e-6)


def test_sequence_vs_token_differ():
    # One long row and one short row: sequence weights rows equally, token weights tokens.
    values = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = jnp.asarray([[1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_allclose(masked_mean(values, mask, "sequence"), 3.0, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(values, mask, "token"), 9.0 / 5.0, rtol=1e-6)


def test_masked_jit():
    values, mask = make_batch()
    fn = jax.jit(masked_mean, static_argnames="reduction")
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(
            fn(jnp.asarray(values), jnp.asarray(mask), reduction=reduction),
            np.divide(*ref_masked(values, mask, reduction)),
            rtol=1e-6,
        )


def test_unknown_reduction():
    with pytest.raises(ValueError, match="sequence"):
        masked_sum_count(jnp.ones((2, 2)), jnp.ones((2, 2)), "mean")
