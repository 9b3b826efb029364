"""The paper's baselines: total variation and the divergence registry (gkd_jax.objectives.losses)
against a
float64 numpy reference, and the lmbda schedules (gkd_jax.training.schedules)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import central_differences

from gkd_jax.objectives.losses import (
    DIVERGENCES,
    divergence,
    generalized_jsd,
    get_divergence,
    total_variation,
)
from gkd_jax.training.schedules import LMBDA_SCHEDULES, lmbda_at

SHAPES = [(11,), (2, 5, 11), (3, 7)]
TEMPERATURES = [0.5, 1.0, 2.0]


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_tv(student, teacher, temperature=1.0):
    """0.5 * sum_v |p_T - p_S| in float64, straight from the definition."""
    ps = ref_softmax(np.asarray(student, np.float64) / temperature)
    pt = ref_softmax(np.asarray(teacher, np.float64) / temperature)
    return 0.5 * np.abs(pt - ps).sum(axis=-1)


# Gradients are jitted: eager jax.grad compiles every primitive separately (~3 s on CPU).


def random_logits(shape, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- total_variation


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_tv_matches_reference(shape, temperature):
    s, t = random_logits(shape, 0), random_logits(shape, 1)
    out = total_variation(jnp.asarray(s), jnp.asarray(t), temperature=temperature)
    assert out.shape == shape[:-1]
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_tv(s, t, temperature), rtol=1e-5, atol=1e-6)


def test_tv_bounds_symmetry_and_identity():
    s, t = random_logits((4, 6, 13), 2), random_logits((4, 6, 13), 3)
    s, t = jnp.asarray(s), jnp.asarray(t)
    out = np.asarray(total_variation(s, t))
    assert np.all(out > 0) and np.all(out <= 1)
    np.testing.assert_allclose(total_variation(t, s), out, rtol=1e-6)
    np.testing.assert_allclose(total_variation(s, s), 0.0, atol=1e-7)
    # A shift of all logits leaves the softmax, hence TV, unchanged.
    np.testing.assert_allclose(total_variation(s + 3.0, s), 0.0, atol=1e-6)


def test_tv_reaches_one_on_disjoint_support():
    # Near-one-hot on different ids: TV -> 1, the upper bound; still float32-finite.
    s = jnp.asarray([[30.0, 0.0, 0.0], [0.0, -np.inf, 0.0]])
    t = jnp.asarray([[0.0, 30.0, 0.0], [-np.inf, 0.0, -np.inf]])
    out = np.asarray(total_variation(s, t))
    np.testing.assert_allclose(out, [1.0, 1.0], atol=1e-6)
    assert np.all(out <= 1.0)


def test_tv_neg_inf_logits_equal_dropping_ids():
    s, t = random_logits((2, 3, 10), 4), random_logits((2, 3, 10), 5)
    s[..., [0, 4]] = -np.inf
    t[..., [0, 4]] = -np.inf
    fn = functools.partial(total_variation, temperature=0.7)
    out = fn(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(out, ref_tv(s, t, 0.7), rtol=1e-5, atol=1e-6)
    grad = jax.jit(jax.grad(lambda x: fn(x, jnp.asarray(t)).sum()))(jnp.asarray(s))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[..., [0, 4]], 0.0)
    keep = [i for i in range(10) if i not in (0, 4)]
    np.testing.assert_allclose(out, fn(jnp.asarray(s[..., keep]), jnp.asarray(t[..., keep])))


def test_tv_grad_matches_finite_differences():
    # A generic point (no p_T == p_S ties), where TV is differentiable.
    shape, temperature = (2, 3, 7), 1.5
    s, t = random_logits(shape, 6), random_logits(shape, 7)
    w = np.random.default_rng(8).standard_normal(shape[:-1])  # weights so positions differ

    def ref_loss(x):
        return np.sum(w * ref_tv(x, t, temperature))

    fd = central_differences(ref_loss, s)

    def loss(x):
        per_token = total_variation(x, jnp.asarray(t), temperature=temperature)
        return jnp.sum(jnp.asarray(w, jnp.float32) * per_token)

    grad = jax.jit(jax.grad(loss))(jnp.asarray(s))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


def test_tv_grad_at_equality_is_a_bounded_subgradient():
    # TV has a kink at p_T == p_S: JAX returns some subgradient (float rounding picks the signs),
    # which must be finite and obey the bound of every TV gradient, |dTV/dz_v| <= p_S(v) / tau.
    s = random_logits((3, 5), 9)
    tau = 0.5
    fn = jax.jit(jax.grad(lambda x, y: total_variation(x, y, temperature=tau).sum()))
    bound = ref_softmax(s / tau) / tau + 1e-6
    for teacher in (s, s + 1e-7):
        grad = np.asarray(fn(jnp.asarray(s), jnp.asarray(teacher)))
        assert np.all(np.isfinite(grad))
        assert np.all(np.abs(grad) <= bound)
        np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)  # softmax shift invariance


def test_tv_bf16_and_jit():
    s, t = random_logits((2, 5, 11), 10), random_logits((2, 5, 11), 11)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    out = total_variation(s16, t16)
    assert out.dtype == jnp.float32
    rounded = ref_tv(np.asarray(s16, np.float32), np.asarray(t16, np.float32))
    np.testing.assert_allclose(out, rounded, rtol=1e-5, atol=1e-6)
    traced = jax.jit(lambda a, b, tau: total_variation(a, b, temperature=tau))
    np.testing.assert_allclose(traced(s, t, 0.5), ref_tv(s, t, 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, shapes, name",
    [
        ({"temperature": 0.0}, ((2, 4), (2, 4)), "temperature"),
        ({"temperature": -1.0}, ((2, 4), (2, 4)), "temperature"),
        ({}, ((2, 4), (2, 5)), "shapes"),
    ],
)
def test_tv_bad_arguments(kwargs, shapes, name):
    with pytest.raises(ValueError, match=name):
        total_variation(jnp.zeros(shapes[0]), jnp.zeros(shapes[1]), **kwargs)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "name, beta, want_beta",
    [("fkl", None, 0.0), ("fkl", 0.0, 0.0), ("rkl", None, 1.0), ("rkl", 1.0, 1.0)]
    + [("jsd", b, b) for b in (0.0, 0.1, 0.5, 0.9, 1.0)],
)
def test_registry_names_are_generalized_jsd(name, beta, want_beta):
    s, t = jnp.asarray(random_logits((3, 4, 9), 12)), jnp.asarray(random_logits((3, 4, 9), 13))
    want = generalized_jsd(s, t, beta=want_beta, temperature=2.0)
    got = get_divergence(name, beta=beta)(s, t, temperature=2.0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(divergence(name, s, t, beta=beta, temperature=2.0), want)


def test_registry_fkl_rkl_are_the_kls():
    # Independent of generalized_jsd: forward KL(p_T||p_S) and reverse KL(p_S||p_T) in float64.
    s, t = random_logits((4, 9), 14), random_logits((4, 9), 15)
    ps, pt = ref_softmax(s), ref_softmax(t)
    fkl = np.sum(pt * np.log(pt / ps), axis=-1)
    rkl = np.sum(ps * np.log(ps / pt), axis=-1)
    s, t = jnp.asarray(s), jnp.asarray(t)
    np.testing.assert_allclose(divergence("fkl", s, t), fkl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(divergence("rkl", s, t), rkl, rtol=1e-5, atol=1e-6)


def test_registry_tv():
    s, t = random_logits((3, 8), 16), random_logits((3, 8), 17)
    assert get_divergence("tv") is total_variation
    np.testing.assert_allclose(
        divergence("tv", jnp.asarray(s), jnp.asarray(t), temperature=0.5),
        ref_tv(s, t, 0.5),
        rtol=1e-5,
        atol=1e-6,
    )


def test_registry_jits_with_name_static():
    s, t = jnp.asarray(random_logits((2, 6), 18)), jnp.asarray(random_logits((2, 6), 19))
    for name in DIVERGENCES:
        beta = 0.3 if name == "jsd" else None
        fn = jax.jit(get_divergence(name, beta=beta))
        np.testing.assert_allclose(fn(s, t), divergence(name, s, t, beta=beta), rtol=1e-6)


@pytest.mark.parametrize(
    "name, beta, match",
    [
        ("kl", None, "unknown divergence"),
        ("jsd", None, "needs beta"),
        ("jsd", 1.5, "beta"),
        ("jsd", -0.1, "beta"),
        ("jsd", math.nan, "beta"),
        ("fkl", 0.5, "beta=0.0"),
        ("rkl", 0.0, "beta=1.0"),
        ("tv", 0.5, "beta"),
    ],
)
def test_registry_bad_arguments(name, beta, match):
    with pytest.raises(ValueError, match=match):
        get_divergence(name, beta=beta)


# ---------------------------------------------------------------- lmbda schedules


def test_constant_schedule():
    for step in (0, 1, 50, 100):
        assert lmbda_at(step, 100, kind="constant", lmbda=0.7) == 0.7


def test_imitkd_is_half():
    assert lmbda_at(0, 10, kind="imitkd") == 0.5
    assert lmbda_at(10, 10, kind="imitkd", lmbda=0.5) == 0.5


def test_linear_schedule():
    values = [lmbda_at(step, 4, kind="linear", lmbda=0.8) for step in range(5)]
    assert values == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert lmbda_at(1, 1, kind="linear", lmbda=1.0) == 1.0


def test_exponential_schedule():
    # ImitKD's dataset share 200 ** -(t / N) -> student share 1 - 200 ** -(t / N).
    assert lmbda_at(0, 10, kind="exponential", lmbda=1.0) == 0.0
    assert lmbda_at(5, 10, kind="exponential", lmbda=1.0) == pytest.approx(1 - 200**-0.5)
    assert lmbda_at(10, 10, kind="exponential", lmbda=0.5) == pytest.approx(0.5 * (1 - 1 / 200))


@pytest.mark.parametrize("kind", LMBDA_SCHEDULES)
@pytest.mark.parametrize("lmbda", [0.0, 0.5, 1.0])
def test_schedules_bounded_monotone_deterministic(kind, lmbda):
    lmbda_arg = None if kind == "imitkd" else lmbda
    values = [lmbda_at(s, 37, kind=kind, lmbda=lmbda_arg) for s in range(38)]
    assert all(isinstance(v, float) for v in values)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert max(values) <= (0.5 if kind == "imitkd" else lmbda)
    assert values == [lmbda_at(s, 37, kind=kind, lmbda=lmbda_arg) for s in range(38)]
    assert lmbda_at(np.int64(3), np.int64(37), kind=kind, lmbda=lmbda_arg) == values[3]


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((0, 10), {"kind": "cosine", "lmbda": 0.5}, "kind"),
        ((0, 0), {"kind": "constant", "lmbda": 0.5}, "total_steps"),
        ((0, 2.5), {"kind": "constant", "lmbda": 0.5}, "total_steps"),
        ((-1, 10), {"kind": "linear", "lmbda": 0.5}, "step"),
        ((11, 10), {"kind": "linear", "lmbda": 0.5}, "step"),
        ((1.5, 10), {"kind": "linear", "lmbda": 0.5}, "step"),
        ((True, 10), {"kind": "linear", "lmbda": 0.5}, "step"),
        ((0, 10), {"kind": "constant"}, "needs lmbda"),
        ((0, 10), {"kind": "linear", "lmbda": 1.5}, "lmbda"),
        ((0, 10), {"kind": "constant", "lmbda": -0.1}, "lmbda"),
        ((0, 10), {"kind": "constant", "lmbda": math.nan}, "lmbda"),
        ((0, 10), {"kind": "imitkd", "lmbda": 1.0}, "lmbda"),
    ],
)
def test_schedule_bad_input(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        lmbda_at(*args, **kwargs)
