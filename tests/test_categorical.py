"""The sampler's own random draws: the Threefry hash and two-level Gumbel-max sampling.

References: the Random123 known-answer vectors of Threefry-2x32-20 and JAX's own Threefry
(jax.extend.random.threefry_2x32); frequencies against a numpy softmax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from gkd_jax.sampling import blocked_argmax, gumbel_noise, sample_categorical, threefry2x32

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
