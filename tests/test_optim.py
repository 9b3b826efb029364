"""config.optim -> optimizer: schedule values against numpy formulas written from their
definitions, and one or two updates of each optimizer against numpy reimplementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.training import optim


def optim_config(steps=100, **fields):
    c = base_config()
    c.steps = steps
    c.optim.update(fields)
    return c


@pytest.mark.parametrize(
    "warmup, cooldown, total",
    [(20, 30, 100), (0, 30, 100), (20, 0, 100), (0, 0, 50), (60, 60, 100), (2000, 10000, 40000)],
)
def test_linear_schedule_matches_its_definition(warmup, cooldown, total):
    peak = 3e-4
    config = optim_config(total, schedule="linear", learning_rate=peak, warmup_steps=warmup,
                          cooldown_steps=cooldown)  # fmt: skip
    validate_config(config)
    t = np.unique(np.linspace(0, total, 401).astype(int))
    # Definition: ramp 0 -> peak over [0, warmup], peak, ramp peak -> 0 over [total - cooldown,
    # total]; where the two overlap (60 + 60 > 100) the two ramps multiply.
    up = np.ones_like(t, float) if warmup == 0 else np.minimum(t / warmup, 1.0)
    down = np.ones_like(t, float) if cooldown == 0 else np.clip((total - t) / cooldown, 0, 1)
    expected = peak * up * down
    if warmup + cooldown <= total and warmup and cooldown:  # the plain trapezoid
        trapezoid = np.interp(t, [0, warmup, total - cooldown, total], [0, peak, peak, 0])
        np.testing.assert_allclose(expected, trapezoid, rtol=1e-12, atol=1e-18)
    schedule = optim.make_schedule(config)
    got = np.array([float(schedule(jnp.int32(s))) for s in t])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_paper_xsum_schedule_points():
    """The paper's XSum / GSM8K recipe: 40K steps, 2K warmup, linear to 0 over the last 10K."""
    config = optim_config(40_000, schedule="linear", learning_rate=3e-4, warmup_steps=2000,
                          cooldown_steps=10_000)  # fmt: skip
    schedule = optim.make_schedule(config)
    for count, lr in [(0, 0.0), (1000, 1.5e-4), (2000, 3e-4), (30_000, 3e-4), (35_000, 1.5e-4),
                      (39_999, 3e-8)]:  # fmt: skip
        assert float(schedule(count)) == pytest.approx(lr, rel=1e-5, abs=1e-12)


def tree(rng):
    # Factored (two dims >= 128), unfactored matrix, vector: each Adafactor branch once.
    return {
        "w": rng.standard_normal((128, 130)).astype(np.float32) * 0.05,
        "m": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal((5,)).astype(np.float32) * 1e-5,  # RMS below the 1e-3 floor
    }


def numpy_adafactor(params, grads_seq, lr, *, eps1=1e-30, eps2=1e-3, clip=1.0, decay=0.8):
    """Shazeer & Stern (2018), Alg. 4 with T5's settings: beta2_t = 1 - t^-decay, factored
    second moments (row and column means) for a matrix with both dims >= 128, update clipped to
    block RMS `clip`, scaled by max(eps2, RMS(param)) * lr; no momentum."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    state = {}
    for t, grads in enumerate(grads_seq, start=1):
        beta2 = 1.0 - t**-decay
        for k, g in grads.items():
            g = g.astype(np.float64)
            g2 = g * g + eps1
            if g.ndim == 2 and min(g.shape) >= 128:
                r_old, c_old = state.get(k, (0.0, 0.0))
                r = beta2 * r_old + (1 - beta2) * g2.mean(axis=1)  # [rows]
                c = beta2 * c_old + (1 - beta2) * g2.mean(axis=0)  # [cols]
                state[k] = (r, c)
                v = np.outer(r, c) / r.mean()
            else:
                v = beta2 * state.get(k, 0.0) + (1 - beta2) * g2
                state[k] = v
            u = g / np.sqrt(v)
            u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
            scale = max(eps2, np.sqrt(np.mean(p[k] ** 2)))
            p[k] = p[k] - lr * scale * u
    return p


def numpy_adamw(params, grads, lr, b1, b2, wd, clip, eps=1e-8):
    """One AdamW step (t = 1) on gradients clipped to global norm `clip`."""
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    factor = min(1.0, clip / norm)
    out = {}
    for k, g in grads.items():
        g = g.astype(np.float64) * factor
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        out[k] = params[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * params[k])
    return out


def run_updates(tx, params, grads_seq):
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for grads in grads_seq:
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, p)
        p = jax.tree.map(jnp.add, p, updates)
    return p


def test_adafactor_from_config_matches_numpy():
    rng = np.random.default_rng(0)
    params = tree(rng)
    grads_seq = [tree(rng), tree(rng), tree(rng)]
    config = optim_config(name="adafactor", schedule="linear", learning_rate=1e-2,
                          warmup_steps=0, grad_clip=0.0)  # fmt: skip
    validate_config(config)
    got = run_updates(optim.make_optimizer(config), params, grads_seq)
    want = numpy_adafactor(params, grads_seq, 1e-2)
    for k in params:
        moved = np.abs(want[k] - params[k]).max()
        assert moved > 0
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=1e-4 * moved)


def test_adamw_from_config_matches_numpy_with_clipping():
    rng = np.random.default_rng(1)
    params, grads = tree(rng), tree(rng)
    config = optim_config(name="adamw", schedule="linear", learning_rate=1e-3, warmup_steps=0,
                          b1=0.8, b2=0.95, weight_decay=0.1, grad_clip=0.5)  # fmt: skip
    got = run_updates(optim.make_optimizer(config), params, [grads])
    want = numpy_adamw(params, grads, 1e-3, 0.8, 0.95, 0.1, 0.5)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-7)


def test_unknown_names_fail_naming_the_field():
    with pytest.raises(ValueError, match="config.optim.name="):
        optim.make_optimizer(optim_config(name="sgd"))
    with pytest.raises(ValueError, match="config.optim.schedule="):
        optim.make_optimizer(optim_config(schedule="rsqrt"))
