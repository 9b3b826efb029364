"""Tests for gkd_jax.models.decoder against an independent float64 numpy reference.

Tiny models only (vocab 37, hidden 32, 2 layers): the whole file runs in seconds on CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gkd_jax.models import DecoderConfig, build_decoder, functional
from gkd_jax.models.decoder import causal_mask, positions_from_mask, rope

V, D, L = 37, 32, 2


def make_cfg(**kw):
    base = dict(
        vocab_size=V,
        hidden_size=D,
        num_layers=L,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=48,
        rms_norm_eps=1e-6,
    )
    base.update(kw)
    return DecoderConfig(**base)


CONFIGS = {
    "tied_gqa": make_cfg(),
    "untied_gqa": make_cfg(tie_embeddings=False),
    "tied_mha_bias": make_cfg(num_kv_heads=4, qkv_bias=True),
    "untied_mqa_bias_headdim": make_cfg(
        num_kv_heads=1, qkv_bias=True, tie_embeddings=False, head_dim=16, rope_theta=500.0
    ),
}


T = 11  # one sequence length for full forwards, so jitted apply_fns are reused across tests
PAIR = ["tied_gqa", "untied_mqa_bias_headdim"]  # configs for the padding and cache tests


def random_decoder(cfg: DecoderConfig, seed: int):
    """build_decoder's structure with numpy-random weights (no eager init ops to compile).

    Norm weights and biases are randomized too (init makes them 1 and 0, hiding mistakes).
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_decoder(cfg)))
    rng = np.random.default_rng(seed)

    def init(path, x):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        z = rng.standard_normal(x.shape)
        if name == "weight":  # RMSNorm
            z = 1.0 + 0.3 * z
        elif name == "bias":
            z = 0.5 * z
        elif name == "embedding":
            z = 0.5 * z
        else:  # kernels [in, out]
            z = z / np.sqrt(x.shape[0])
        return jnp.asarray(z, x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(init, state))


@functools.cache
def model_for(name: str):
    return random_decoder(CONFIGS[name], seed=list(CONFIGS).index(name))


# ---------------------------------------------------------------- numpy reference (float64)


def f64(x):
    return np.asarray(x[...], np.float64)


def ref_rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def ref_rope(x, pos, theta):
    """x: [B, T, N, H]; pos: [B, T]. HF rotate-half convention."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) / half)
    ang = pos.astype(np.float64)[..., None, None] * inv_freq  # [B, T, 1, H/2]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * np.concatenate([cos, cos], -1) + rotated * np.concatenate([sin, sin], -1)


def ref_linear(x, lin):
    y = x @ f64(lin.kernel)
    if getattr(lin, "bias", None) is not None:
        y = y + f64(lin.bias)
    return y


def ref_silu(x):
    return x / (1.0 + np.exp(-x))


def ref_masks(valid):
    """valid [B, T] -> positions [B, T] (pads 0), attention mask [B, T, T]."""
    valid = np.asarray(valid, bool)
    t = valid.shape[1]
    pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    causal = np.arange(t)[None, :] <= np.arange(t)[:, None]
    return pos, causal[None] & valid[:, None, :]


def ref_forward(model, tokens, valid):
    """Full forward from the definition; returns [B, T, V] float64 logits."""
    cfg = model.cfg
    n, k = cfg.num_heads, cfg.num_kv_heads
    h = cfg.head_dim or cfg.hidden_size // cfg.num_heads
    pos, mask = ref_masks(valid)
    emb = f64(model.embed_tokens.embedding)
    x = emb[np.asarray(tokens)]  # [B, T, D]
    b, t, _ = x.shape
    for layer in model.layers:
        att = layer.self_attn
        y = ref_rms(x, f64(layer.input_layernorm.weight), cfg.rms_norm_eps)
        q = ref_rope(ref_linear(y, att.q_proj).reshape(b, t, n, h), pos, cfg.rope_theta)
        kk = ref_rope(ref_linear(y, att.k_proj).reshape(b, t, k, h), pos, cfg.rope_theta)
        vv = ref_linear(y, att.v_proj).reshape(b, t, k, h)
        heads = []
        for i in range(n):
            j = i // (n // k)  # kv head shared by this query head's group
            s = np.einsum("btd,bsd->bts", q[:, :, i], kk[:, :, j]) / np.sqrt(h)
            s = np.where(mask, s, -np.inf)
            m = np.max(np.where(mask, s, -1e300), axis=-1, keepdims=True)
            e = np.where(mask, np.exp(s - m), 0.0)
            p = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)  # pad queries: all zero
            heads.append(np.einsum("bts,bsd->btd", p, vv[:, :, j]))
        x = x + ref_linear(np.concatenate(heads, axis=-1), att.o_proj)
        y = ref_rms(x, f64(layer.post_attention_layernorm.weight), cfg.rms_norm_eps)
        mlp = layer.mlp
        x = x + ref_linear(
            ref_silu(ref_linear(y, mlp.gate_proj)) * ref_linear(y, mlp.up_proj), mlp.down_proj
        )
    x = ref_rms(x, f64(model.norm.weight), cfg.rms_norm_eps)
    if cfg.tie_embeddings:
        assert not hasattr(model, "lm_head")
        return x @ emb.T
    return x @ f64(model.lm_head.kernel)


# ---------------------------------------------------------------- data


def left_padded_batch(rng, lengths, t, pad_token=0):
    tokens = np.full((len(lengths), t), pad_token, np.int32)
    valid = np.zeros((len(lengths), t), bool)
    for i, n in enumerate(lengths):
        tokens[i, t - n :] = rng.integers(1, V, n)
        valid[i, t - n :] = True
    return tokens, valid


@functools.cache
def jitted_apply(name):
    params, apply_fn, init_cache = functional(model_for(name))
    return params, jax.jit(apply_fn), init_cache


# ---------------------------------------------------------------- tests


def test_config_rejects_non_divisible_heads():
    with pytest.raises(ValueError, match="multiple"):
        DecoderConfig(
            vocab_size=V,
            hidden_size=D,
            num_layers=1,
            num_heads=3,
            num_kv_heads=2,
            intermediate_size=8,
        )


def test_mask_and_position_helpers_match_numpy():
    valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    pos, mask = ref_masks(valid)
    np.testing.assert_array_equal(np.asarray(positions_from_mask(jnp.asarray(valid))), pos)
    np.testing.assert_array_equal(np.asarray(causal_mask(jnp.asarray(valid))), mask)
    np.testing.assert_array_equal(pos[0], [0, 0, 0, 1, 2])


@pytest.mark.parametrize("theta", [10_000.0, 37.0])
def test_rope_matches_numpy(theta):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 50, (2, 5))
    got = np.asarray(rope(jnp.asarray(x), jnp.asarray(pos), theta))
    np.testing.assert_allclose(
        got, ref_rope(x.astype(np.float64), pos, theta), rtol=1e-5, atol=1e-5
    )
    # Position 0 is the identity, and the rotation preserves each pair's norm.
    np.testing.assert_allclose(
        np.asarray(rope(jnp.asarray(x), jnp.zeros((2, 5), jnp.int32), theta)), x, atol=1e-7
    )
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_numpy_reference(name):
    model = model_for(name)
    cfg = model.cfg
    assert hasattr(model, "lm_head") == (not cfg.tie_embeddings)
    rng = np.random.default_rng(2)
    tokens, valid = left_padded_batch(rng, [T, 6, 1], T)
    pos, mask = ref_masks(valid)
    params, apply_fn, _ = jitted_apply(name)
    logits, cache = apply_fn(params, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))
    assert cache is None
    assert logits.shape == (3, T, V) and logits.dtype == jnp.float32
    logits = np.asarray(logits)
    assert np.all(np.isfinite(logits))  # pad queries (fully masked) included
    ref = ref_forward(model, tokens, valid)
    np.testing.assert_allclose(logits[valid], ref[valid], rtol=1e-4, atol=1e-4)
    assert np.std(ref[valid]) > 0.1  # the comparison is not between near-constant logits


@pytest.mark.parametrize("name", PAIR)
def test_left_padding_invariance(name):
    params, apply_fn, _ = jitted_apply(name)
    rng = np.random.default_rng(4)
    n, pad = 7, T - 7
    rows = rng.integers(1, V, (3, T)).astype(np.int32)
    # Batched [B, T]: row 0 is rows[0, :n] left-padded by T - n pad tokens (7, not 0).
    tokens = rows.copy()
    tokens[0] = np.concatenate([np.full(pad, 7, np.int32), rows[0, :n]])
    valid = np.ones((3, T), bool)
    valid[0, :pad] = False
    valid[2, :2] = False
    v = jnp.asarray(valid)
    padded, _ = apply_fn(params, jnp.asarray(tokens), positions_from_mask(v), causal_mask(v))
    padded = np.asarray(padded)
    # The same row alone, unpadded (other rows: anything of length n).
    alone_v = jnp.ones((3, n), bool)
    alone, _ = apply_fn(
        params, jnp.asarray(rows[:, :n]), positions_from_mask(alone_v), causal_mask(alone_v)
    )
    np.testing.assert_allclose(padded[0, pad:], np.asarray(alone)[0], atol=2e-5, rtol=2e-5)
    # The pad tokens' identity changes nothing at real positions, in any row.
    tokens2 = tokens.copy()
    tokens2[0, :pad] = [1, 30, 2, 36]
    tokens2[2, :2] = [5, 9]
    padded2, _ = apply_fn(params, jnp.asarray(tokens2), positions_from_mask(v), causal_mask(v))
    np.testing.assert_allclose(np.asarray(padded2)[valid], padded[valid], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", PAIR)
def test_cached_decoding_equals_full_forward(name):
    params, apply_fn, init_cache = jitted_apply(name)
    cfg = CONFIGS[name]
    rng = np.random.default_rng(5)
    p, k = 6, T - 6
    lengths = np.array([6, 3, 1])
    prompt, prompt_valid = left_padded_batch(rng, lengths, p, pad_token=11)
    cont = rng.integers(1, V, (3, k)).astype(np.int32)  # teacher-forced continuation

    # One full forward over prompt + continuation.
    full_tokens = jnp.asarray(np.concatenate([prompt, cont], axis=1))
    full_valid = jnp.asarray(np.concatenate([prompt_valid, np.ones((3, k), bool)], axis=1))
    full, _ = apply_fn(
        params, full_tokens, positions_from_mask(full_valid), causal_mask(full_valid)
    )
    full = np.asarray(full)

    # Prefill into a cache of length P + K, then one token at a time.
    s = p + k
    cache = init_cache(3, s)
    assert len(cache) == cfg.num_layers
    assert cache[0]["k"].shape == (3, s, cfg.num_kv_heads, cfg.dim_per_head)
    key_valid = np.zeros((3, s), bool)
    key_valid[:, :p] = prompt_valid
    causal = np.arange(s)[None, :] <= np.arange(p)[:, None]  # [P, S]
    pv = jnp.asarray(prompt_valid)
    logits, cache = apply_fn(
        params,
        jnp.asarray(prompt),
        positions_from_mask(pv),
        jnp.asarray(causal[None] & key_valid[:, None, :]),
        cache,
        0,
    )
    np.testing.assert_allclose(
        np.asarray(logits)[prompt_valid], full[:, :p][prompt_valid], atol=1e-5, rtol=1e-5
    )
    for i in range(k):
        key_valid[:, p + i] = True
        logits, cache = apply_fn(
            params,
            jnp.asarray(cont[:, i : i + 1]),
            jnp.asarray((lengths + i)[:, None].astype(np.int32)),
            jnp.asarray(key_valid[:, None, :]),
            cache,
            jnp.int32(p + i),
        )
        assert logits.shape == (3, 1, V)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, p + i], atol=1e-5, rtol=1e-5)
        if i == 0:
            compiled = apply_fn._cache_size()
    # The decode step compiles once: a traced cache_index does not retrace per slot.
    assert apply_fn._cache_size() == compiled
