"""Top-K + tail teachers (gkd_jax/objectives/sparse_teacher.py) against the full loss (K = V) and
against a
float64 numpy reference written from the definition (K < V): values, gradients, extremes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from finite_differences import central_differences
from tiny_step_pair import V as V_STEP
from tiny_step_pair import models, random_batch

from gkd_jax.config.defaults import base_config
from gkd_jax.objectives import losses
from gkd_jax.objectives.sparse_teacher import (
    TAIL_FLOOR,
    bytes_per_token,
    log1mexp,
    sparse_divergence,
    top_k_log_probs,
)
from gkd_jax.parallel import sharding
from gkd_jax.training import step
from gkd_jax.training.rl_step import make_rl_train_step
from gkd_jax.training.step import TEACHER_KEYS, Objective

V = 13
CASES = [("fkl", None), ("rkl", None), ("jsd", 0.3), ("jsd", 0.5), ("tv", None)]


# ---------------------------------------------------------------- numpy reference (float64)
def ref_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def ref_bins(p, top):
    """p [..., V] collapsed onto the ids `top` [..., K] and the tail: [..., K + 1], the tail
    summed over its own entries (not 1 - the rest), so tiny tails keep their digits."""
    inside = np.zeros(p.shape, bool)
    np.put_along_axis(inside, top, True, axis=-1)
    tail = np.sum(np.where(inside, 0.0, p), axis=-1, keepdims=True)
    return np.concatenate([np.take_along_axis(p, top, axis=-1), tail], axis=-1)


def ref_kl(p, q):
    pos = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(np.where(pos, p * (np.log(np.where(pos, p, 1)) - np.log(q)), 0.0), -1)


def ref_divergence(name, beta, t, s):
    if name == "tv":
        return 0.5 * np.sum(np.abs(t - s), axis=-1)
    beta = {"fkl": 0.0, "rkl": 1.0}.get(name, beta)
    if beta == 0.0:
        return ref_kl(t, s)
    if beta == 1.0:
        return ref_kl(s, t)
    m = beta * t + (1 - beta) * s
    return beta * ref_kl(t, m) + (1 - beta) * ref_kl(s, m)


def ref_sparse(name, beta, zs, zt, k, temperature=1.0):
    """The definition: top-K ids of the teacher's tempered distribution, both collapsed."""
    pt = np.exp(ref_log_softmax(np.asarray(zt, np.float64) / temperature))
    ps = np.exp(ref_log_softmax(np.asarray(zs, np.float64) / temperature))
    top = np.argsort(-pt, axis=-1, kind="stable")[..., :k]
    return ref_divergence(name, beta, ref_bins(pt, top), ref_bins(ps, top))


def sparse(name, beta, zs, zt, k, temperature=1.0, with_tail=True):
    ids, logp, tail = top_k_log_probs(jnp.asarray(zt), k, temperature=temperature)
    return sparse_divergence(
        name, jnp.asarray(zs), ids, logp, tail if with_tail else None,
        beta=beta, temperature=temperature,
    )  # fmt: skip


def logits(seed, shape=(4, 6, V), scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize(("name", "beta"), CASES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_k_equal_v_is_the_full_loss(name, beta, temperature):
    zs, zt = logits(0), logits(1)
    full = losses.divergence(name, zs, zt, beta=beta, temperature=temperature)
    got = sparse(name, beta, zs, zt, V, temperature)
    np.testing.assert_allclose(got, full, rtol=2e-6, atol=2e-7)
    # Without the tail given: at K = V it is empty, never floored.
    got = sparse(name, beta, zs, zt, V, temperature, with_tail=False)
    np.testing.assert_allclose(got, full, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize(("name", "beta"), CASES)
@pytest.mark.parametrize("k", [1, 3, 8, V - 1])
def test_k_below_v_matches_the_float64_reference(name, beta, k):
    zs, zt = logits(2), logits(3)
    got = sparse(name, beta, zs, zt, k, 0.8)
    np.testing.assert_allclose(got, ref_sparse(name, beta, zs, zt, k, 0.8), rtol=1e-5, atol=1e-7)
    # The tail derived from the top-K log-probs alone (1 - their sum, in float32) agrees to the
    # precision of that difference: here the smallest tail is ~1e-4, known to ~1e-7 absolute.
    derived = sparse(name, beta, zs, zt, k, 0.8, with_tail=False)
    np.testing.assert_allclose(derived, got, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_coarse_graining_never_exceeds_the_full_divergence(name, beta):
    zs, zt = logits(4), logits(5)
    full = np.asarray(losses.divergence(name, zs, zt, beta=beta))
    values = [np.asarray(sparse(name, beta, zs, zt, k)) for k in (1, 2, 5, 9, V - 1, V)]
    for v in values:
        assert np.all(v <= full + 1e-6)
    np.testing.assert_allclose(values[-1], full, rtol=2e-6, atol=2e-7)


# ---------------------------------------------------------------- extremes
def peaked_teacher(tail_logit=-60.0):
    """A teacher with its top 3 ids holding all but ~exp(tail_logit) of the mass."""
    zt = np.full((2, 3, V), tail_logit, np.float32)
    zt[..., :3] = [2.0, 1.0, 0.0]
    return zt


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_top_k_mass_near_one_is_exact_with_the_given_tail(name, beta):
    """Tail mass ~1e-26: the live teacher's / cache's tail (a masked logsumexp) keeps it."""
    zs, zt = logits(6, (2, 3, V)), peaked_teacher()
    _, _, tail = top_k_log_probs(jnp.asarray(zt), 3)
    ref_tail = np.log(10 * np.exp(-60.0) / (np.exp(2.0) + np.exp(1.0) + 1 + 10 * np.exp(-60.0)))
    np.testing.assert_allclose(tail, ref_tail, rtol=1e-6)
    got = sparse(name, beta, zs, zt, 3)
    np.testing.assert_allclose(got, ref_sparse(name, beta, zs, zt, 3), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_top_k_mass_near_one_without_a_tail_is_floored_and_finite(name, beta):
    """From the top-K log-probs alone the mass rounds to 1: the tail is floored at TAIL_FLOOR,
    which keeps every divergence finite (reverse KL would be +inf); the loss is then exactly
    the definition's with t_tail = TAIL_FLOOR (renormalized)."""
    zs, zt = logits(7, (2, 3, V)), peaked_teacher()
    got = np.asarray(sparse(name, beta, zs, zt, 3, with_tail=False))
    assert np.all(np.isfinite(got))
    pt = np.exp(ref_log_softmax(zt))
    top = np.argsort(-pt, axis=-1, kind="stable")[..., :3]
    t = ref_bins(pt, top)
    t[..., -1] = TAIL_FLOOR
    t /= t.sum(-1, keepdims=True)
    s = ref_bins(np.exp(ref_log_softmax(zs)), top)
    np.testing.assert_allclose(got, ref_divergence(name, beta, t, s), rtol=1e-5, atol=1e-7)
    grads = jax.grad(lambda z: jnp.sum(sparse(name, beta, z, zt, 3, with_tail=False)))(zs)
    assert np.all(np.isfinite(grads))


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_tiny_student_tail_stays_finite(name, beta):
    """The student puts ~e^-80 outside S: 1 - sum would round it to 0 and FKL to +inf."""
    zt = logits(8, (2, 3, V))
    zs = np.full((2, 3, V), -80.0, np.float32)
    top = np.argsort(-zt, axis=-1)[..., :4]
    np.put_along_axis(zs, top, 1.0, axis=-1)
    got = sparse(name, beta, zs, zt, 4)
    np.testing.assert_allclose(got, ref_sparse(name, beta, zs, zt, 4), rtol=1e-5, atol=1e-7)
    grads = jax.grad(lambda z: jnp.sum(sparse(name, beta, z, zt, 4)))(zs)
    assert np.all(np.isfinite(grads))


def test_log1mexp_both_branches():
    x = np.array([-1e-30, -1e-8, -0.3, -0.7, -2.0, -50.0, 0.0], np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(divide="ignore"):
        expected = np.where(x64 > -np.log(2), np.log(-np.expm1(x64)), np.log1p(-np.exp(x64)))
    got = np.asarray(log1mexp(jnp.asarray(x)))
    np.testing.assert_allclose(got[:-1], expected[:-1], rtol=1e-6)
    assert got[-1] == -np.inf
    assert np.all(np.isfinite(jax.grad(lambda v: jnp.sum(log1mexp(v)))(jnp.asarray(x[:-1]))))


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_padded_positions_do_not_count(name, beta):
    """Masked positions with garbage teacher entries (repeated ids, nonsense log-probs) change
    neither the masked loss nor the gradient, which is exactly zero there."""
    zs, zt = logits(9, (3, 5, V)), logits(10, (3, 5, V))
    mask = np.arange(5)[None] < np.array([5, 2, 3])[:, None]  # [3, 5]
    ids, logp, tail = top_k_log_probs(jnp.asarray(zt), 4)
    ids = jnp.where(mask[..., None], ids, 0)
    logp = jnp.where(mask[..., None], logp, 5.0)
    tail = jnp.where(mask, tail, 0.0)

    def loss(z):
        per = sparse_divergence(name, z, ids, logp, tail, beta=beta)
        return losses.masked_mean(per, jnp.asarray(mask), "sequence")

    value, grads = jax.value_and_grad(loss)(jnp.asarray(zs))
    per_ref = ref_sparse(name, beta, zs, zt, 4)
    rows = [per_ref[i, mask[i]].mean() for i in range(3)]
    np.testing.assert_allclose(value, np.mean(rows), rtol=1e-5)
    assert np.all(np.asarray(grads)[~mask] == 0) and np.all(np.isfinite(grads))


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_bfloat16_inputs(name, beta):
    """bf16 student logits and bf16 teacher log-probs (a bf16 cache) are upcast: the loss is the
    reference's on the rounded values."""
    zs = jnp.asarray(logits(11)).astype(jnp.bfloat16)
    zt = logits(12)
    ids, logp, tail = top_k_log_probs(jnp.asarray(zt), 5)
    got = sparse_divergence(name, zs, ids, logp.astype(jnp.bfloat16), tail, beta=beta)
    ref = ref_sparse(name, beta, np.asarray(zs.astype(jnp.float32)), zt, 5)
    assert got.dtype == jnp.float32
    # bf16 log-probs carry ~3 significant digits: the teacher's bins move by ~0.4% relative.
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-3)
    exact_t = sparse_divergence(name, zs, ids, logp, tail, beta=beta)
    np.testing.assert_allclose(exact_t, ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize(("name", "beta"), CASES[:4])
@pytest.mark.parametrize("k", [2, 6])
def test_gradient_matches_finite_differences_of_the_reference(name, beta, k):
    zs, zt = logits(13, (2, V), 1.5), logits(14, (2, V), 1.5)
    ids, logp, tail = top_k_log_probs(jnp.asarray(zt), k, temperature=0.9)
    grad = jax.grad(
        lambda z: jnp.sum(sparse_divergence(name, z, ids, logp, tail, beta=beta, temperature=0.9))
    )(jnp.asarray(zs))
    fd = central_differences(lambda z: np.sum(ref_sparse(name, beta, z, zt, k, 0.9)), zs)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6)


def test_forward_kl_gradient_in_closed_form():
    """d FKL / d z_j = (p_j - t_j) / tau on S and p_j (1 - t_tail / s_tail) / tau in the tail."""
    tau, k = 1.3, 4
    zs, zt = logits(15, (3, V)), logits(16, (3, V))
    ids, logp, tail = top_k_log_probs(jnp.asarray(zt), k, temperature=tau)
    grad = jax.grad(
        lambda z: jnp.sum(sparse_divergence("fkl", z, ids, logp, tail, temperature=tau))
    )(jnp.asarray(zs))
    p = np.exp(ref_log_softmax(zs / tau))
    pt = np.exp(ref_log_softmax(zt / tau))
    top = np.argsort(-pt, axis=-1)[..., :k]
    t, s = ref_bins(pt, top), ref_bins(p, top)
    expected = p * (1 - t[..., -1:] / s[..., -1:]) / tau
    np.put_along_axis(
        expected,
        top,
        (np.take_along_axis(p, top, -1) - np.take_along_axis(pt, top, -1)) / tau,
        axis=-1,
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_bytes_per_token():
    assert bytes_per_token(64, 4) == 516 and bytes_per_token(64, 2) == 388
    assert 151_936 * 4 // bytes_per_token(64, 4) == 1177  # full float32 logits vs K = 64


def test_bad_shapes_and_k():
    zs = jnp.zeros((2, V))
    with pytest.raises(ValueError, match="K <= V"):
        top_k_log_probs(zs, V + 1)
    with pytest.raises(ValueError, match="shapes differ"):
        sparse_divergence("fkl", zs, jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown divergence"):
        sparse_divergence("kl", zs, jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))


# ---------------------------------------------------------------- the train steps
def with_summary(config, batch, t_fns, t_params):
    """The batch with its teacher summary, as a cache holds it (step.TEACHER_KEYS)."""
    objective = Objective(config, t_fns, t_fns)
    args = [batch[k] for k in ("prompt", "prompt_mask", "completion", "completion_mask")]
    summary = jax.jit(lambda p: objective.teacher_top_k(t_fns.score(p, *args)))(t_params)
    return batch | dict(zip(TEACHER_KEYS, jax.device_get(summary), strict=True))


def fresh_state(params, tx):
    params = jax.tree.map(jnp.array, params)  # a copy: the step donates its state
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def gkd_config(**gkd):
    config = base_config()
    config.gkd.update(beta=0.3, teacher_temperature=0.8, loss_temperature=1.2)
    config.gkd.update(gkd)
    return config


def run_steps(config, batches, *, mesh=None, cached=False, rl=False):
    """Params and metrics after one step per batch; the live teacher unless `cached`."""
    params, s_fns, t_params, t_fns = models()
    tx = optax.adam(1e-2)
    if cached:
        batches = [with_summary(config, b, t_fns, t_params) for b in batches]
        t_fns = t_params = None
    make = make_rl_train_step if rl else step.make_train_step
    if mesh is None:
        state, train_step = fresh_state(params, tx), make(config, s_fns, t_fns, tx)
    else:
        state, shardings = sharding.init_train_state(jax.tree.map(jnp.array, params), tx, mesh)
        t_shardings = None
        if t_params is not None:
            t_shardings = sharding.tree_shardings(t_params, mesh)
            t_params = jax.device_put(t_params, t_shardings)
        train_step = make(
            config, s_fns, t_fns, tx, mesh=mesh, state_shardings=shardings,
            teacher_shardings=t_shardings,
        )  # fmt: skip
        batches = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in batches]
    metrics = []
    for batch in batches:
        state, m = train_step(state, t_params, batch)
        metrics.append(jax.device_get(m))
    return jax.device_get(state["params"]), metrics, train_step


def assert_close_runs(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0]), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    for ma, mb in zip(a[1], b[1], strict=True):
        np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "gkd",
    [dict(divergence="jsd"), dict(divergence="fkl", reduction="token"), dict(divergence="tv")],
)
def test_step_at_k_equal_v_is_the_full_step(gkd):
    batches = [random_batch(s, rewards=False) for s in range(2)]
    full = run_steps(gkd_config(**gkd), batches)
    assert_close_runs(run_steps(gkd_config(teacher_top_k=V_STEP, **gkd), batches), full)


def test_step_from_a_cached_batch_is_the_live_sparse_step():
    config = gkd_config(teacher_top_k=5, divergence="rkl")
    config.grad_accum = 2
    batches = [random_batch(s, rewards=False) for s in range(2)]
    live, cached = run_steps(config, batches), run_steps(config, batches, cached=True)
    # The teacher scored 8 rows at a time (a micro-batch) vs 16: float32 rounding apart.
    assert_close_runs(cached, live)
    full = run_steps(gkd_config(divergence="rkl"), batches)
    assert live[1][0]["loss"] < full[1][0]["loss"]  # coarse-grained: a lower bound


def test_sparse_steps_on_the_2x2x2_mesh_equal_one_device_and_compile_once():
    """data x fsdp x tensor = 2 x 2 x 2, two micro-batches: the live sparse step and the cached
    one (no teacher at all) give what one device gives, compiled once over three steps."""
    config = gkd_config(teacher_top_k=6)
    config.grad_accum = 2
    batches = [random_batch(s, rewards=False) for s in range(3)]
    one = run_steps(config, batches, mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    for cached in (False, True):
        params, metrics, train_step = run_steps(config, batches, mesh=mesh, cached=cached)
        assert_close_runs((params, metrics), one, rtol=1e-4, atol=1e-5)
        assert train_step._cache_size() == 1


@pytest.mark.slow
def test_rl_step_takes_the_live_teachers_top_k():
    """rl.alpha = 0.5 with a JSD term: at K = V the rl step is unchanged; at K < V its
    divergence metric is the sparse divergence of the samples."""
    config = gkd_config(divergence="jsd")
    config.rl.update(alpha=0.5, reward="exact_answer", num_samples=2, kl_to_start="off")
    rng = np.random.default_rng(0)
    batches = [random_batch(s, rewards=False) | dict(rewards=rng.normal(size=16).astype(np.float32))
               for s in range(2)]  # fmt: skip
    full = run_steps(config, batches, rl=True)
    config_v = gkd_config(divergence="jsd", teacher_top_k=V_STEP)
    config_v.rl.update(config.rl)
    assert_close_runs(run_steps(config_v, batches, rl=True), full)
    config_k = gkd_config(divergence="jsd", teacher_top_k=4)
    config_k.rl.update(config.rl)
    _, metrics, _ = run_steps(config_k, batches[:1], rl=True)
    params, s_fns, t_params, t_fns = models()
    b = batches[0]
    args = [b[k] for k in ("prompt", "prompt_mask", "completion", "completion_mask")]
    ids, logp, tail = top_k_log_probs(t_fns.score(t_params, *args) / 0.8, 4, temperature=1.2)
    per = sparse_divergence("jsd", s_fns.score(params, *args), ids, logp, tail, beta=0.3,
                            temperature=1.2)  # fmt: skip
    expected = losses.masked_mean(per, jnp.asarray(b["completion_mask"]), "sequence")
    np.testing.assert_allclose(metrics[0]["divergence"], expected, rtol=1e-5)
