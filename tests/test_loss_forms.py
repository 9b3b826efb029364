"""Tests for gkd_jax.objectives.loss_forms: each memory-lean form equals the materialized loss,
value and
gradient, and its compiled program really is small."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from test_losses import random_logits, ref_jsd, ref_masked  # float64 numpy reference

from gkd_jax.objectives.loss_forms import VOCAB_AXIS, chunked_jsd_loss, fused_jsd_loss
from gkd_jax.objectives.losses import REDUCTIONS, generalized_jsd, masked_sum_count

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
B, T, V = 4, 6, 16  # N = 24 positions
TEMPERATURE = 0.7
RTOL = 1e-5
# Every beta once, the two reductions taking turns.
BETA_REDUCTIONS = [(beta, REDUCTIONS[i % 2]) for i, beta in enumerate(BETAS)]


def make_mask():
    rng = np.random.default_rng(30)
    mask = rng.uniform(size=(B, T)) < 0.6
    mask[0] = True
    mask[2] = False  # a fully masked row
    return jnp.asarray(mask)


def reference(s, t, mask, beta, reduction, temperature=TEMPERATURE):
    """The materialized loss: what every form must equal."""
    per_token = generalized_jsd(s, t, beta=beta, temperature=temperature)  # [B, T]
    return masked_sum_count(per_token, mask, reduction)


def assert_close(actual, expected, rtol=RTOL):
    """max |a - e| <= rtol * max |e|, over the whole array (gradients hold exact zeros)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected)), 1e-30)
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= rtol, f"max relative error {err:.2e} > {rtol:.0e}"


def assert_same_loss(form, ref, *args, argnums=0, primal=False):
    """Value and gradient of `form` vs `ref`; with `primal`, also the value computed without
    differentiating (the custom VJP's primal rule rather than its forward rule)."""
    step = jax.jit(jax.value_and_grad(form, argnums, has_aux=True))
    (got_sum, got_count), got_grad = step(*args)
    (want_sum, want_count), want_grad = jax.value_and_grad(ref, argnums, has_aux=True)(*args)
    assert float(got_count) == float(want_count)
    assert_close(got_sum, want_sum)
    for got, want in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want)
    if primal:
        assert_close(jax.jit(form)(*args)[0], want_sum)


def logits_pair(seed=0, shape=(B, T, V)):
    return jnp.asarray(random_logits(shape, seed)), jnp.asarray(random_logits(shape, seed + 1))


# ---------------------------------------------------------------- chunked


@pytest.mark.parametrize("beta, reduction", BETA_REDUCTIONS)
def test_chunked_matches_reference(beta, reduction):
    s, t = logits_pair()
    mask = make_mask()
    kw = {"beta": beta, "reduction": reduction}
    form = lambda s, t: chunked_jsd_loss(s, t, mask, temperature=TEMPERATURE, chunk=5, **kw)
    assert_same_loss(form, lambda s, t: reference(s, t, mask, **kw), s, t)


@pytest.mark.parametrize("chunk", [6, 64])  # 6 = T: no partial chunk; 64 > N: only one
def test_chunked_chunk_sizes(chunk):
    s, t = logits_pair(1)
    mask = make_mask()
    form = lambda s, t: chunked_jsd_loss(s, t, mask, beta=0.5, temperature=2.0, chunk=chunk)
    ref = lambda s, t: reference(s, t, mask, 0.5, "sequence", 2.0)
    assert_same_loss(form, ref, s, t, primal=True)


@pytest.mark.parametrize("beta, reduction", BETA_REDUCTIONS)
def test_chunked_matches_float64_reference(beta, reduction):
    s, t = logits_pair(2)
    mask = make_mask()
    total, count = chunked_jsd_loss(s, t, mask, beta=beta, reduction=reduction, chunk=5)
    want = ref_masked(ref_jsd(s, t, beta), np.asarray(mask), reduction)
    np.testing.assert_allclose([float(total), float(count)], want, rtol=RTOL)


def test_chunked_teacher_gets_no_gradient_and_bf16_grads_stay_bf16():
    s, t = logits_pair(4)
    s, t = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
    mask = make_mask()
    loss = lambda s, t: chunked_jsd_loss(s, t, mask, beta=0.5, chunk=5)[0]
    ds, dt = jax.jit(jax.grad(loss, argnums=(0, 1)))(s, t)
    assert ds.dtype == jnp.bfloat16 and not np.any(np.asarray(dt, np.float32))
    want = jax.grad(lambda s: reference(s, t, mask, 0.5, "sequence", 1.0)[0])(s)
    np.testing.assert_allclose(np.asarray(ds, np.float32), np.asarray(want, np.float32), atol=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_neg_inf_vocab_entries(beta):
    s, t = (np.array(x) for x in logits_pair(6))
    s[..., [0, 9]] = -np.inf  # masked vocabulary ids, in both
    t[..., [0, 9]] = -np.inf
    s, t, mask = jnp.asarray(s), jnp.asarray(t), make_mask()
    form = lambda s, t: chunked_jsd_loss(s, t, mask, beta=beta, temperature=TEMPERATURE, chunk=5)
    assert_same_loss(form, lambda s, t: reference(s, t, mask, beta, "sequence"), s, t)


def test_traced_temperature_compiles_once():
    s, t = logits_pair(8)
    mask = make_mask()
    traces = []

    @jax.jit
    def step(s, t, temperature):
        traces.append(1)
        loss = lambda s: chunked_jsd_loss(s, t, mask, beta=0.9, temperature=temperature, chunk=5)
        return jax.value_and_grad(lambda s: loss(s)[0])(s)

    for temperature in (0.5, 2.0):
        got, grad = step(s, t, temperature)
        want = reference(s, t, mask, 0.9, "sequence", temperature)[0]
        assert_close(got, want)
    step(s + 1.0, t, 1.0)
    assert len(traces) == 1


# ---------------------------------------------------------------- fused with the unembedding

DS, DT = 5, 7


def hidden_and_unembed(seed=10):
    rng = np.random.default_rng(seed)
    arrays = [
        rng.standard_normal((B, T, DS)),
        rng.standard_normal((DS, V)),
        rng.standard_normal((B, T, DT)),
        rng.standard_normal((DT, V)),
    ]
    return [jnp.asarray(x, jnp.float32) for x in arrays]


def fused_reference(hs, ws, ht, wt, mask, beta, reduction, caps=(None, None)):
    def softcap(z, cap):
        return z if cap is None else cap * jnp.tanh(z / cap)

    zs, zt = softcap(hs @ ws, caps[0]), softcap(ht @ wt, caps[1])
    return reference(zs, jax.lax.stop_gradient(zt), mask, beta, reduction)


@pytest.mark.parametrize("beta, reduction", BETA_REDUCTIONS)
def test_fused_matches_reference(beta, reduction):
    hs, ws, ht, wt = hidden_and_unembed()
    mask = make_mask()
    caps = (3.0, 4.0)  # tight enough to matter: logits here reach ~±8
    kw = {"beta": beta, "reduction": reduction}

    def form(hs, ws, ht, wt):
        return fused_jsd_loss(
            hs, ws, ht, wt, mask, temperature=TEMPERATURE, chunk=5,
            student_softcap=caps[0], teacher_softcap=caps[1], **kw,
        )  # fmt: skip

    ref = lambda hs, ws, ht, wt: fused_reference(hs, ws, ht, wt, mask, caps=caps, **kw)
    assert_same_loss(form, ref, hs, ws, ht, wt, argnums=(0, 1, 2, 3))  # teacher: zeros both


@pytest.mark.parametrize("chunk", [1, 64])
def test_fused_chunk_sizes(chunk):
    hs, ws, ht, wt = hidden_and_unembed(11)
    mask = make_mask()
    form = lambda hs, ws: fused_jsd_loss(hs, ws, ht, wt, mask, beta=0.5, chunk=chunk)
    ref = lambda hs, ws: masked_sum_count(
        generalized_jsd(hs @ ws, ht @ wt, beta=0.5), mask, "sequence"
    )
    assert_same_loss(form, ref, hs, ws, argnums=(0, 1), primal=True)


# ---------------------------------------------------------------- vocabulary-parallel


def mesh_of(shape):
    return Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", VOCAB_AXIS))


@pytest.mark.parametrize("beta", BETAS)
def test_vocab_parallel_chunked(beta, mesh_shape=(1, 8)):  # (2, 4): see the two tests below
    s, t = logits_pair(12)
    mask = make_mask()
    mesh = mesh_of(mesh_shape)
    kw = {"beta": beta, "reduction": "sequence"}
    form = lambda s, t: chunked_jsd_loss(
        s, t, mask, temperature=TEMPERATURE, chunk=5, mesh=mesh, **kw
    )
    assert_same_loss(form, lambda s, t: reference(s, t, mask, **kw), s, t, primal=beta == 0.5)


@pytest.mark.parametrize("beta", BETAS)
def test_vocab_parallel_fused(beta, mesh_shape=(2, 4)):
    hs, ws, ht, wt = hidden_and_unembed(13)
    mask = make_mask()
    mesh = mesh_of(mesh_shape)
    kw = {"beta": beta, "reduction": "token"}

    def form(hs, ws):
        return fused_jsd_loss(
            hs, ws, ht, wt, mask, temperature=TEMPERATURE, student_softcap=3.0, chunk=5,
            mesh=mesh, **kw,
        )  # fmt: skip

    ref = lambda hs, ws: fused_reference(hs, ws, ht, wt, mask, caps=(3.0, None), **kw)
    assert_same_loss(form, ref, hs, ws, argnums=(0, 1), primal=beta == 0.5)


@pytest.mark.parametrize("beta", [0.5])
def test_vocab_parallel_neg_inf_shard(beta):
    # One device's whole vocabulary shard is masked for some rows: its max is -inf.
    s, t = (np.array(x) for x in logits_pair(14))
    s[:2, :, :4] = -np.inf
    t[:2, :, :4] = -np.inf
    s, t, mask = jnp.asarray(s), jnp.asarray(t), make_mask()
    form = lambda s, t: chunked_jsd_loss(s, t, mask, beta=beta, mesh=mesh_of((2, 4)))
    assert_same_loss(form, lambda s, t: reference(s, t, mask, beta, "sequence", 1.0), s, t)


def test_vocab_parallel_never_holds_a_full_row():
    vocab = 8 * 37  # a size that appears nowhere else in the program
    mesh = mesh_of((2, 4))
    sharding = NamedSharding(mesh, P("data", None, VOCAB_AXIS))
    s, t = jax.device_put(logits_pair(16, shape=(B, T, vocab)), sharding)
    mask = make_mask()
    loss = lambda s, t: chunked_jsd_loss(s, t, mask, beta=0.5, chunk=5, mesh=mesh)[0]
    hlo = jax.jit(jax.value_and_grad(loss)).lower(s, t).compile().as_text()
    assert f",{vocab // 4}]" in hlo and f",{vocab}]" not in hlo


# ---------------------------------------------------------------- compiled memory


def temp_bytes(fn, *args, argnums=0, donate=()):
    step = jax.jit(jax.value_and_grad(lambda *a: fn(*a)[0], argnums), donate_argnums=donate)
    return step.lower(*args).compile().memory_analysis()


def test_compiled_temp_memory_is_small():
    b, t, v, d = 2, 256, 32768, 256
    logits = jax.ShapeDtypeStruct((b, t, v), jnp.float32)
    hidden, unembed = (
        jax.ShapeDtypeStruct((b, t, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
    )
    mask = jax.ShapeDtypeStruct((b, t), jnp.bool_)
    ref = temp_bytes(lambda s, t, m: reference(s, t, m, 0.5, "token"), logits, logits, mask)
    chunked = temp_bytes(
        lambda s, t, m: chunked_jsd_loss(s, t, m, beta=0.5, reduction="token"),
        logits, logits, mask,
    )  # fmt: skip
    # Donated, the gradient takes the student logits' buffer: nothing [B, T, V] is added.
    donated = temp_bytes(
        lambda s, t, m: chunked_jsd_loss(s, t, m, beta=0.5), logits, logits, mask, donate=(0,)
    )
    fused_ref = temp_bytes(
        lambda hs, ws, ht, wt, m: fused_reference(hs, ws, ht, wt, m, 0.5, "token"),
        hidden, unembed, hidden, unembed, mask, argnums=(0, 1),
    )  # fmt: skip
    fused = temp_bytes(
        lambda hs, ws, ht, wt, m: fused_jsd_loss(hs, ws, ht, wt, m, beta=0.5, chunk=64),
        hidden, unembed, hidden, unembed, mask, argnums=(0, 1),
    )  # fmt: skip
    logits_bytes = b * t * v * 4
    print(
        {k: x.temp_size_in_bytes / 2**20 for k, x in
         {"reference": ref, "chunked": chunked, "donated": donated,
          "fused_reference": fused_ref, "fused": fused}.items()}
    )  # fmt: skip
    assert ref.temp_size_in_bytes >= 4 * logits_bytes  # what there is to save
    assert chunked.temp_size_in_bytes < ref.temp_size_in_bytes / 16
    assert donated.temp_size_in_bytes <= chunked.temp_size_in_bytes + 2**20
    assert donated.alias_size_in_bytes == logits_bytes
    assert fused.temp_size_in_bytes < fused_ref.temp_size_in_bytes / 4


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 1.5}, "beta"),
        ({"beta": 0.5, "temperature": 0.0}, "temperature"),
        ({"beta": 0.5, "reduction": "mean"}, "sequence"),
        ({"beta": 0.5, "chunk": 0}, "chunk"),
        ({"beta": 0.5, "mesh": "no tensor axis"}, "tensor"),
        ({"beta": 0.5, "mesh": "vocab 16 over 3"}, "divide"),
    ],
)
def test_bad_arguments(kwargs, message):
    s, t = logits_pair()
    if kwargs.get("mesh") == "no tensor axis":
        kwargs["mesh"] = Mesh(np.array(jax.devices()[:2]), ("data",))
    elif "mesh" in kwargs:
        kwargs["mesh"] = Mesh(np.array(jax.devices()[:3]).reshape(1, 3), ("data", VOCAB_AXIS))
    with pytest.raises(ValueError, match=message):
        chunked_jsd_loss(s, t, make_mask(), **kwargs)


def test_shape_mismatch():
    s, t = logits_pair()
    with pytest.raises(ValueError, match="shapes"):
        chunked_jsd_loss(s, t[..., :-1], make_mask(), beta=0.5)
    hs, ws, ht, wt = hidden_and_unembed()
    with pytest.raises(ValueError, match="shapes"):
        fused_jsd_loss(hs, ws, ht, wt[:, :-1], make_mask(), beta=0.5)
