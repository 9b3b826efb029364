"""A model-agnostic jitted sampler: one prefill, then a `lax.while_loop` decode.

The model is reached through a `Decoding` pair of pure functions (prefill, step) whose state is
any pytree (protocol.py), so a decoder-only model (KV cache) and an encoder-decoder (encoder
output + decoder cache) plug in alike; each family builds its pair (models/decoder.py, t5.py).
Prompts are left-padded. Rows are independent: a row that stops early never changes another
row's tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from gkd_jax.decoding.protocol import DecodeConfig, DecodeLength, Decoding


@dataclasses.dataclass(frozen=True)
class _SamplingKnobs(DecodeLength):
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off


@dataclasses.dataclass(frozen=True)
class SamplingConfig(DecodeConfig, _SamplingKnobs):
    """(max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id, vocab_size)."""

    def __post_init__(self):
        super().__post_init__()
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


@struct.dataclass
class SampleOutput:
    tokens: jax.Array  # [B, N] int32; pad_id after a row's stop token
    mask: jax.Array  # [B, N] bool; True up to and including the first stop token
    prompt_lengths: jax.Array  # [B] int32, real (unpadded) prompt tokens
    num_steps: jax.Array  # [] int32, decode steps run (< N when every row stopped early)


@struct.dataclass
class _DecodeState:
    step: jax.Array  # [] int32, tokens emitted so far
    tokens: jax.Array  # [B, N] int32
    mask: jax.Array  # [B, N] bool
    logits: jax.Array  # [B, V] float32, the next token's logits
    done: jax.Array  # [B] bool
    state: Any  # the model family's decoding state (KV cache, ...)
    rng: jax.Array  # [2] uint32 key_words; step s draws its noise with counter s


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Set to the dtype's lowest value every logit outside the top-k and outside the top-p
    nucleus. [B, V].

    As Hugging Face's warpers: top-k keeps every logit tied with the k-th; top-p keeps the
    smallest prefix of the logits sorted in descending order, ties in id order, whose mass
    reaches top_p: a count of positions, so of the logits tied at its edge only the first
    (lowest ids) stay."""
    neg_inf = jnp.finfo(logits.dtype).min
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = -jnp.sort(-logits, axis=-1)  # [B, V] descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest prefix whose mass reaches top_p: n positions (the first always stays).
        n = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)  # [B, 1]
        last = jnp.take_along_axis(sorted_logits, n - 1, axis=-1)  # [B, 1], its last logit
        # A stable sort puts the logits tied with `last` in id order: the prefix holds every
        # logit above it and the first n - (those) of its ties. (This costs the one-operand
        # sort; sorting ids along and scattering the mask back costs ~1.5x on CPU.)
        above, tied = logits > last, logits == last
        tie_rank = jnp.cumsum(tied, axis=-1, dtype=jnp.int32) - tied  # ties before, in id order
        need = n - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
        logits = jnp.where(above | (tied & (tie_rank < need)), logits, neg_inf)
    return logits


# ---------------------------------------------------------------- Gumbel noise in one fused kernel
# jax.random lowers Threefry on CPU as a rolled 5-iteration while loop: inside the decode loop
# that is ~10 small kernels per random call and, with the step's key split, the largest cost of
# a small model's decode step. The same hash written out here fuses with the sampling arithmetic.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array):
    """Threefry-2x32 (20 rounds; Salmon et al. 2011, JAX's PRNG hash) of counters (x1, x2) under
    key (k1, k2); uint32 arrays of one shape (or broadcastable) -> two uint32 arrays."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


# Each noise element is a function of 23 random bits k: u = (k + 1/2) 2^-23 is exact in float32
# and lies in [2^-24, 1 - 2^-24], so the noise is finite by construction (24 bits with a 2^-25
# offset rounded k = 2^24 - 1 to u = 1.0: +inf noise once in 2^24 draws).
NOISE_BITS = 23


def uniform_from_bits(bits: jax.Array) -> jax.Array:
    """uint32 random bits -> float32 u = (k + 1/2) 2^-23 from their top 23 bits k: exact, and
    strictly inside (0, 1)."""
    k = bits >> jnp.uint32(32 - NOISE_BITS)
    return (k.astype(jnp.float32) + 0.5) * 2.0**-NOISE_BITS


def gumbel_from_bits(bits: jax.Array) -> jax.Array:
    """uint32 random bits -> standard Gumbel noise -log(-log(u)), u = uniform_from_bits(bits):
    finite, within 2^-22 max(1, |g|) of the exact value for every one of the 2^23 u
    (tests/test_categorical.py checks them all). u - 1 is exact (a multiple of 2^-24), so
    E = -log1p(u - 1) = -log(u) keeps its precision as u -> 1, where E -> 0."""
    u = uniform_from_bits(bits)
    return -jnp.log(-jnp.log1p(u - 1.0))


def gumbel_noise(key_words: jax.Array, counter: jax.Array, shape: tuple[int, int], offset: int = 0):
    """Standard Gumbel noise [B, K] float32, a pure function of (key_words [2] uint32, counter
    [] uint32, row, offset + column): each decode step passes its own counter, so no key is
    split per step."""
    rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)  # [B, K]
    cols = jax.lax.broadcasted_iota(jnp.uint32, shape, 1) + jnp.uint32(offset)
    hi = counter.astype(jnp.uint32) * jnp.uint32(shape[0]) + rows  # (step, row): unique per row
    b1, b2 = threefry2x32(key_words[0], key_words[1], hi, cols)
    return gumbel_from_bits(b1 ^ b2)


def _blocks(logits: jax.Array) -> tuple[jax.Array, int]:
    """[B, V] -> [B, nb, blk] padded with -inf, blk ~ sqrt(V) a power of two (>= 2)."""
    b, v = logits.shape
    blk = 1 << max(1, math.ceil(math.log2(math.sqrt(v))))
    nb = -(-v // blk)
    padded = jnp.pad(logits, ((0, 0), (0, nb * blk - v)), constant_values=-jnp.inf)
    return padded.reshape(b, nb, blk), blk


def blocked_argmax(logits: jax.Array) -> jax.Array:
    """jnp.argmax(logits, -1) [B, V] -> [B] int32, first maximum on ties, in two levels: XLA:CPU
    runs an argmax (a two-operand reduce) a scalar at a time, a max a vector at a time."""
    blocks, blk = _blocks(logits)
    pick = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)  # [B], the first block holding the max
    inner = jnp.take_along_axis(blocks, pick[:, None, None], axis=1)[:, 0]  # [B, blk]
    return (pick * blk + jnp.argmax(inner, axis=-1)).astype(jnp.int32)


def sample_categorical(logits: jax.Array, key_words: jax.Array, counter: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits) [B, V] -> [B] int32, by Gumbel-max in two levels:
    a block of `blk` ids with probability its share of the mass (logsumexp of the block), then
    an id inside it. Exact (P(block) * P(id | block) = softmax), with ~2 sqrt(V) noise draws per
    row instead of V: XLA:CPU computes a log per element, not per vector, and V of them per step
    would cost more than the student's forward."""
    b, v = logits.shape
    blocks, blk = _blocks(logits)  # [B, nb, blk]
    nb = blocks.shape[1]
    block_lse = jax.nn.logsumexp(blocks, axis=-1)  # [B, nb]
    pick = jnp.argmax(block_lse + gumbel_noise(key_words, counter, (b, nb)), axis=-1)  # [B]
    inner = jnp.take_along_axis(blocks, pick[:, None, None], axis=1)[:, 0]  # [B, blk]
    scores = inner + gumbel_noise(key_words, counter, (b, blk), offset=nb)  # [B, blk]
    if nb * blk > v:  # the padding loses whatever the noise: no id >= V, ever (each block
        # starts below V, and an all -inf row's argmax is its first id)
        ids = pick[:, None] * blk + jax.lax.broadcasted_iota(pick.dtype, (b, blk), 1)
        scores = jnp.where(ids < v, scores, -jnp.inf)
    return (pick * blk + jnp.argmax(scores, axis=-1)).astype(jnp.int32)


def key_words(rng: jax.Array) -> jax.Array:
    """Two uint32 words [2] drawn from a JAX key (any PRNG implementation): the noise's key."""
    return jax.random.bits(rng, (2,), jnp.uint32)


def choose_tokens(
    logits: jax.Array, rng: jax.Array, cfg: SamplingConfig, counter: jax.Array | int = 0
) -> jax.Array:
    """Next token per row from [B, V] logits: greedy, or temperature / top-k / top-p sampling
    (Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits)). `rng` is a JAX
    key, or its `key_words` (the decode loop's, with the step as `counter`)."""
    if cfg.vocab_size:
        logits = logits[:, : cfg.vocab_size]
    if cfg.temperature == 0.0:
        return blocked_argmax(logits)
    logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    words = rng if rng.dtype == jnp.uint32 else key_words(rng)
    return sample_categorical(logits, words, jnp.asarray(counter, jnp.uint32))


def sample(
    decoding: Decoding,
    params: Any,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    cfg: SamplingConfig,
) -> SampleOutput:
    """Sample `cfg.max_new_tokens` tokens after left-padded prompts [B, P] (mask [B, P])."""
    b = prompt.shape[0]
    n = cfg.max_new_tokens
    prompt_len = prompt_mask.astype(bool).sum(axis=1).astype(jnp.int32)  # [B]
    logits, state = decoding.prefill(params, prompt, prompt_mask, n)
    stop_ids = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)

    def cond(s: _DecodeState):
        return (s.step < n) & ~jnp.all(s.done)

    def body(s: _DecodeState):
        tok = choose_tokens(s.logits, s.rng, cfg, counter=s.step)  # [B]
        tok = jnp.where(s.done, cfg.pad_id, tok)
        tokens = s.tokens.at[:, s.step].set(tok)
        mask = s.mask.at[:, s.step].set(~s.done)
        done = s.done | jnp.isin(tok, stop_ids)
        logits, state = decoding.step(params, tok, s.step, s.state)
        return _DecodeState(
            s.step + 1, tokens, mask, logits.astype(jnp.float32), done, state, s.rng
        )

    init = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((b, n), cfg.pad_id, jnp.int32),
        mask=jnp.zeros((b, n), bool),
        logits=logits.astype(jnp.float32),
        done=jnp.zeros((b,), bool),
        state=state,
        rng=key_words(rng),
    )
    final = jax.lax.while_loop(cond, body, init)
    return SampleOutput(final.tokens, final.mask, prompt_len, final.step)


def make_sampler(
    decoding: Decoding, cfg: SamplingConfig, *, rows=None, compiler_options=None
) -> Callable:
    """Jitted `sampler(params, prompt, prompt_mask, rng) -> SampleOutput`, one compile per shape.

    `rows`: a sharding for the [B, ...] outputs (sharding.batch_sharding), so that decoding
    keeps each row on the devices that hold its prompt rather than replicating the batch; the
    models pin their activations so too (sharding.constrain_rows, on under the mesh).
    `compiler_options`: for jax.jit (sampler_memory.sampler_compiler_options on TPU)."""
    out_shardings, on_mesh = None, contextlib.nullcontext
    if rows is not None:
        whole = jax.sharding.NamedSharding(rows.mesh, jax.sharding.PartitionSpec())
        out_shardings = SampleOutput(rows, rows, rows, whole)
        on_mesh = functools.partial(jax.sharding.use_abstract_mesh, rows.mesh.abstract_mesh)

    @functools.partial(jax.jit, out_shardings=out_shardings, compiler_options=compiler_options)
    def sampler(params, prompt, prompt_mask, rng):
        with on_mesh():
            return sample(decoding, params, prompt, prompt_mask, rng, cfg)

    return sampler
