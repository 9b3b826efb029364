"""The sampler's own random draws: the Threefry hash and two-level Gumbel-max sampling.

References: the Random123 known-answer vectors of Threefry-2x32-20 and JAX's own Threefry
(jax.extend.random.threefry_2x32); frequencies against a numpy softmax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from gkd_jax.decoding import sampling
from gkd_jax.decoding.sampling import (
    SamplingConfig,
    blocked_argmax,
    choose_tokens,
    gumbel_noise,
    sample_categorical,
    threefry2x32,
)

# (key, counter) -> output, Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123 kat).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key,counter,expected", KNOWN_ANSWERS)
def test_threefry_known_answers(key, counter, expected):
    u = [jnp.uint32(x) for x in (*key, *counter)]
    got = jax.jit(threefry2x32)(*u)
    assert tuple(int(g) for g in got) == expected


def test_threefry_matches_jax():
    rng = np.random.default_rng(0)
    k = rng.integers(0, 2**32, 2, dtype=np.uint32)
    x1, x2 = (rng.integers(0, 2**32, 64, dtype=np.uint32) for _ in range(2))
    # JAX's hashes a flat count: its first half as x1, its second as x2.
    ref = np.asarray(threefry_2x32(jnp.asarray(k), jnp.concatenate([x1, x2])))
    got = np.concatenate([np.asarray(g) for g in threefry2x32(*map(jnp.asarray, (*k, x1, x2)))])
    np.testing.assert_array_equal(got, ref)


def test_gumbel_noise_moments_and_independence():
    words = jnp.array([7, 11], jnp.uint32)
    g = np.asarray(gumbel_noise(words, jnp.uint32(0), (64, 4096)))
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g.mean(), np.euler_gamma, atol=0.01)  # Gumbel(0, 1) mean
    np.testing.assert_allclose(g.var(), np.pi**2 / 6, rtol=0.02)
    other = np.asarray(gumbel_noise(words, jnp.uint32(1), (64, 4096)))
    assert abs(np.corrcoef(g.ravel(), other.ravel())[0, 1]) < 0.01  # counters: new draws
    shifted = np.asarray(gumbel_noise(words, jnp.uint32(0), (64, 8), offset=8))
    np.testing.assert_array_equal(shifted, g[:, 8:16])  # offset = later columns


@pytest.mark.parametrize("v", [300, 4])
def test_sample_categorical_frequencies_match_softmax(v):
    """Many rows of one logits vector (V not a multiple of the block; some ids at -inf)."""
    rng = np.random.default_rng(1)
    row = (1.5 * rng.standard_normal(v)).astype(np.float32)
    row[1::7] = -np.inf
    n = 40_000
    draw = jax.jit(sample_categorical)
    toks = np.asarray(draw(jnp.asarray(np.tile(row, (n, 1))), jnp.array([3, 5], jnp.uint32), 9))
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    freq = np.bincount(toks, minlength=v) / n
    assert freq.shape == (v,) and np.all(freq[row == -np.inf] == 0)
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs.max() / n) + 1e-4)


@pytest.mark.parametrize("v", [37, 300, 1024])
def test_blocked_argmax_equals_argmax_with_ties(v):
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 3, (64, v)).astype(np.float32)  # many ties: the first maximum wins
    x[::5, 1::3] = -np.inf
    x[7] = -np.inf  # a row without a finite logit
    got = np.asarray(jax.jit(blocked_argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


# ---------------------------------------------------------------- the noise map, exhaustively


def test_noise_map_every_bit_pattern():
    """Every one of the 2^NOISE_BITS values the noise can take: u exact and strictly inside
    (0, 1) in float32, the Gumbel value finite and within 2^-22 max(1, |g|) of float64's
    -log(-log(u)) (2^-22: two float32 epsilons, relative, or absolute around g = 0)."""
    bits = sampling.NOISE_BITS
    k = np.arange(2**bits, dtype=np.uint32)
    low = np.random.default_rng(0).integers(0, 2 ** (32 - bits), k.size, dtype=np.uint32)
    words = (k << np.uint32(32 - bits)) | low  # the low bits are ignored
    u, g = jax.jit(lambda w: (sampling.uniform_from_bits(w), sampling.gumbel_from_bits(w)))(
        jnp.asarray(words)
    )
    u, g = np.asarray(u), np.asarray(g)
    assert u.dtype == g.dtype == np.float32
    u64 = (k + 0.5) * 2.0**-bits
    outside = (u <= 0) | (u >= 1)
    assert not outside.any(), f"k = {k[outside]}: u = {u[outside]}"
    np.testing.assert_array_equal(u.astype(np.float64), u64)  # exact
    infinite = ~np.isfinite(g)
    assert not infinite.any(), f"k = {k[infinite]}: gumbel = {g[infinite]}"
    ref = -np.log(-np.log(u64))
    err = np.abs(g - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() <= 2.0**-22, (err.max(), k[err.argmax()])
    # The extremes by hand: u = 2^-24 and 1 - 2^-24 (23 bits), and their neighbours.
    top, half = 2**bits - 1, 2.0 ** -(bits + 1)
    for i, expected in [(0, half), (1, 3 * half), (top - 1, 1 - 3 * half), (top, 1 - half)]:
        assert u[i] == expected and np.isfinite(g[i]), (i, u[i], g[i])
        assert abs(g[i] - ref[i]) <= 2.0**-22 * max(1.0, abs(ref[i])), (i, g[i], ref[i])
    # g(u) ~ -log(-log u): -log((bits + 1) log 2) at the bottom, (bits + 1) log 2 at the top.
    ln2 = np.log(2.0)
    np.testing.assert_allclose([g[0], g[top]], [-np.log((bits + 1) * ln2), (bits + 1) * ln2], 1e-6)


def _rare_event_counts(logits_row, chunks: int, rows: int, draw):
    """(draws not the argmax, ids >= V) over chunks x rows draws of one logits row, each chunk
    with its own counter, in one jitted lax.map."""
    row = jnp.asarray(logits_row)
    v, best = row.shape[0], int(np.argmax(logits_row))
    words = jnp.array([0x9E3779B9, 0x7F4A7C15], jnp.uint32)

    @jax.jit
    def counts(counters):
        def one(c):
            toks = draw(jnp.broadcast_to(row, (rows, v)), words, c)
            return jnp.sum(toks != best), jnp.sum((toks >= v) | (toks < 0))

        return jax.lax.map(one, counters)

    wrong, outside = counts(jnp.arange(chunks, dtype=jnp.uint32))
    return int(np.sum(wrong)), int(np.sum(outside))


def test_top1_sampling_is_the_argmax_in_millions_of_draws():
    """top_k=1 leaves one finite logit: every draw must be it. 4.2M draws x 42 noise elements
    (V=300: 10 block + 32 in-block) hold ~10 of the old map's 1-in-2^24 +inf elements; the
    argmax sits in the last, padded block (ids 288..299, padding 300..319). The old map drew 8
    wrong ids here, 2 of them >= V."""
    v = 300
    row = np.random.default_rng(5).standard_normal(v).astype(np.float32)
    row[295] = row.max() + 1.0
    cfg = SamplingConfig(1, top_k=1)
    draw = lambda logits, words, c: choose_tokens(logits, words, cfg, counter=c)
    wrong, outside = _rare_event_counts(row, chunks=64, rows=2**16, draw=draw)
    assert (wrong, outside) == (0, 0)


def test_one_finite_logit_is_always_drawn_at_a_real_vocabulary():
    """V=151,936 (Qwen): 809 noise elements per draw, so 2^17 draws hold ~6 of the old map's
    +inf elements (it drew 6 wrong ids here); one finite logit, the rest at the filters' lowest
    value, the argmax in the last, padded block (ids 151,552..151,935, padding to 152,063)."""
    v = 151_936
    row = np.full(v, np.finfo(np.float32).min, np.float32)
    row[v - 7] = 0.5
    wrong, outside = _rare_event_counts(row, chunks=512, rows=256, draw=sample_categorical)
    assert (wrong, outside) == (0, 0)
