"""Tests for gkd_jax.decoding.sampling: greedy vs a naive loop, top-k/top-p support, stops, masks,
jit.

Two models: a tiny decoder (vocab 37, hidden 32, 2 layers), and a toy bigram "model" whose
next-token logits are a fixed table row indexed by the input token. Samplers are cached per config,
and every decoder sampler call in this module uses one shape (B=3, P=5), so each compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gkd_jax.decoding.sampling import (
    SamplingConfig,
    choose_tokens,
    filter_logits,
    make_sampler,
)
from gkd_jax.models import DecoderConfig, build_decoder, functional
from gkd_jax.models.decoder import causal_lm_decoding, causal_mask, positions_from_mask

V = 37
NEG = -1e30  # anything at or below this counts as filtered out


# ---------------------------------------------------------------- models


@functools.cache
def decoder():
    cfg = DecoderConfig(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=48,
    )
    # build_decoder's structure, numpy-random weights: no eager init ops to compile.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_decoder(cfg)))
    rng = np.random.default_rng(3)

    def init(x):
        scale = 0.5 if x.ndim == 1 else 1.0 / np.sqrt(x.shape[0])  # kernels are [in, out]
        z = rng.standard_normal(x.shape) * scale
        return jnp.asarray(z + (x.ndim == 1), x.dtype)  # RMSNorm weights around 1

    return functional(nnx.merge(graphdef, jax.tree.map(init, state)))  # params, apply, init_cache


TRACES: dict[SamplingConfig, int] = {}  # apply_fn traces per decoder sampler


@functools.cache
def decoder_sampler(cfg: SamplingConfig):
    _, apply_fn, init_cache = decoder()

    def counting_apply(*args, **kw):
        TRACES[cfg] = TRACES.get(cfg, 0) + 1  # runs only while jax traces
        return apply_fn(*args, **kw)

    return make_sampler(causal_lm_decoding(counting_apply, init_cache), cfg)


# The decoder prompts: B=3, P=5, left-padded (pad token 0), lengths 5, 3, 1.
D_LENGTHS = np.array([5, 3, 1])
D_P, D_N = 5, 6


def decoder_prompt(seed=0):
    rng = np.random.default_rng(seed)
    prompt = np.zeros((3, D_P), np.int32)
    mask = np.zeros((3, D_P), bool)
    for i, n in enumerate(D_LENGTHS):
        prompt[i, D_P - n :] = rng.integers(1, V, n)
        mask[i, D_P - n :] = True
    return jnp.asarray(prompt), jnp.asarray(mask)


def bigram_apply(table, tokens, positions, mask, cache=None, cache_index=None):
    """Next-token logits = table[token]; the cache is a dummy pytree passed through."""
    del positions, mask, cache_index
    return table[tokens], cache


def bigram_init_cache(batch, length):
    return {"dummy": jnp.zeros((batch, length), jnp.float32)}


@functools.cache
def bigram_sampler(cfg: SamplingConfig):
    return make_sampler(causal_lm_decoding(bigram_apply, bigram_init_cache), cfg)


def random_prompts(rng, b, p):
    """Left-padded random prompts [B, P] with lengths 1..P, pad token 0."""
    lengths = rng.integers(1, p + 1, b)
    prompt = rng.integers(1, V, (b, p)).astype(np.int32)
    mask = np.arange(p)[None, :] >= (p - lengths)[:, None]
    prompt[~mask] = 0
    return prompt, mask


def previous_tokens(prompt, tokens):
    """The token each generated token was conditioned on (bigram context). [B, N]."""
    return np.concatenate([np.asarray(prompt)[:, -1:], np.asarray(tokens)[:, :-1]], axis=1)


# ---------------------------------------------------------------- numpy references


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_keep(logits, top_k, top_p):
    """Boolean [B, V]: which tokens survive top-k (ties with the k-th stay), then top-p on the
    renormalized rest, by sorted position as Hugging Face's TopPLogitsWarper: the smallest
    prefix of the stable descending order (ties by id) whose mass reaches top_p."""
    logits = np.asarray(logits, np.float64)
    keep = np.ones(logits.shape, bool)
    if 0 < top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        keep &= logits >= kth
    if top_p < 1.0:
        masked = np.where(keep, logits, -np.inf)
        probs = ref_softmax(masked)
        order = np.argsort(-masked, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
        # Guard against float32 and float64 sums falling on either side of top_p.
        assert np.min(np.abs(before - top_p)) > 1e-5
        nucleus = np.zeros_like(keep)
        np.put_along_axis(nucleus, order, before < top_p, axis=-1)  # smallest prefix with mass>=p
        keep &= nucleus
    return keep


def naive_greedy(prompt, prompt_mask, n):
    """Argmax loop with full (uncached) forwards over prompt + generated-so-far.

    The sequence lives in a fixed [B, P + N] buffer whose not-yet-generated slots are marked
    invalid (never attended to), so one jitted forward serves every step.
    """
    params, _, _ = decoder()
    fwd = _jitted_forward()
    b, p = prompt.shape
    tokens = np.zeros((b, p + n), np.int32)
    valid = np.zeros((b, p + n), bool)
    tokens[:, :p], valid[:, :p] = np.asarray(prompt), np.asarray(prompt_mask)
    for j in range(n):
        logits = np.asarray(fwd(params, jnp.asarray(tokens), jnp.asarray(valid)))
        tokens[:, p + j] = np.argmax(logits[:, p + j - 1], axis=-1)
        valid[:, p + j] = True
    return tokens[:, p:]


@functools.cache
def _jitted_forward():
    _, apply_fn, _ = decoder()

    @jax.jit
    def fwd(params, tokens, valid):
        return apply_fn(params, tokens, positions_from_mask(valid), causal_mask(valid))[0]

    return fwd


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=-3),
        dict(max_new_tokens=4, temperature=-0.5),
        dict(max_new_tokens=4, top_p=0.0),
        dict(max_new_tokens=4, top_p=1.5),
        dict(max_new_tokens=4, top_k=-1),
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        SamplingConfig(**kw)


def test_config_accepts_edge_values():
    SamplingConfig(max_new_tokens=1, temperature=0.0, top_k=0, top_p=1.0)


# ---------------------------------------------------------------- filter_logits / choose_tokens


@pytest.mark.parametrize(
    "top_k,top_p",
    [(0, 1.0), (1, 1.0), (5, 1.0), (V, 1.0), (V + 4, 1.0), (0, 0.3), (0, 0.9), (5, 0.5), (2, 0.99)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_filter_logits_matches_numpy(top_k, top_p, ties):
    rng = np.random.default_rng(10)
    logits = (2.0 * rng.standard_normal((16, V))).astype(np.float32)
    if ties:  # a few distinct values, as bfloat16 logits often are
        logits = np.round(logits)
    got = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    keep = ref_keep(logits, top_k, top_p)
    np.testing.assert_array_equal(got[keep], logits[keep])  # survivors untouched
    assert np.all(got[~keep] <= NEG)  # the rest removed
    assert np.all(keep.sum(-1) >= 1)
    if top_k and top_p == 1.0 and not ties:
        assert np.all(keep.sum(-1) == min(top_k, V))


@pytest.mark.parametrize("first", [0, 2, 5])
def test_top_p_cuts_ties_by_position(first):
    """probs [.384, .141 x 4, .052], top_p=0.5: .384 + .141 reaches it, so two tokens stay, the
    second being the lowest id among the four ties (a threshold on the logit kept all five)."""
    probs = np.array([0.141, 0.141, 0.141, 0.141, 0.052])
    probs = np.insert(probs, first, 0.384)  # the largest at id `first`
    logits = np.log(probs).astype(np.float32)[None]
    tied = np.flatnonzero(probs == 0.141)
    kept = np.flatnonzero(np.asarray(filter_logits(jnp.asarray(logits), 0, 0.5))[0] > NEG)
    np.testing.assert_array_equal(kept, np.sort([first, tied[0]]))
    np.testing.assert_array_equal(ref_keep(logits, 0, 0.5)[0], np.isin(np.arange(6), kept))
    # Sampling draws only those two, in proportion .384 : .141.
    cfg = SamplingConfig(1, top_p=0.5)
    n = 20_000
    toks = np.asarray(choose_tokens(jnp.asarray(np.tile(logits, (n, 1))), jax.random.key(4), cfg))
    assert set(np.unique(toks)) == set(kept)
    np.testing.assert_allclose(np.mean(toks == first), 0.384 / 0.525, atol=0.015)


def test_choose_tokens_greedy_and_top1_are_argmax():
    rng = np.random.default_rng(11)
    logits = jnp.asarray(rng.standard_normal((8, V)).astype(np.float32))
    argmax = np.argmax(np.asarray(logits), axis=-1)
    greedy = choose_tokens(logits, jax.random.key(0), SamplingConfig(4, temperature=0.0))
    assert greedy.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(greedy), argmax)
    for seed in range(3):
        top1 = choose_tokens(logits, jax.random.key(seed), SamplingConfig(4, top_k=1))
        np.testing.assert_array_equal(np.asarray(top1), argmax)


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.6), dict(temperature=0.5, top_k=4)])
def test_choose_tokens_frequencies_match_filtered_softmax(kw):
    """Empirical frequencies over many rows of one logits vector match the filtered softmax."""
    rng = np.random.default_rng(12)
    row = rng.standard_normal(V).astype(np.float32)
    cfg = SamplingConfig(4, **kw)
    n = 20_000
    toks = np.asarray(choose_tokens(jnp.asarray(np.tile(row, (n, 1))), jax.random.key(1), cfg))
    scaled = row[None] / cfg.temperature
    keep = ref_keep(scaled, cfg.top_k, cfg.top_p)[0]
    probs = ref_softmax(np.where(keep, scaled[0], -np.inf))
    freq = np.bincount(toks, minlength=V) / n
    assert np.all(freq[~keep] == 0)
    np.testing.assert_allclose(freq, probs, atol=0.015)


# ---------------------------------------------------------------- greedy on the decoder


def test_greedy_equals_naive_argmax_loop():
    params, _, _ = decoder()
    prompt, pmask = decoder_prompt()
    out = decoder_sampler(SamplingConfig(D_N, temperature=0.0))(
        params, prompt, pmask, jax.random.key(0)
    )
    assert out.tokens.shape == (3, D_N) and out.tokens.dtype == jnp.int32
    assert out.mask.shape == (3, D_N) and out.mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(out.prompt_lengths), D_LENGTHS)
    assert int(out.num_steps) == D_N
    assert np.all(np.asarray(out.mask))
    ref = naive_greedy(prompt, pmask, D_N)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert len(np.unique(ref)) > 2  # not a degenerate constant sequence


def test_near_zero_temperature_equals_greedy():
    params, _, _ = decoder()
    prompt, pmask = decoder_prompt()
    greedy = decoder_sampler(SamplingConfig(D_N, temperature=0.0))(
        params, prompt, pmask, jax.random.key(0)
    )
    for seed in (1, 2):
        cold = decoder_sampler(SamplingConfig(D_N, temperature=1e-6))(
            params, prompt, pmask, jax.random.key(seed)
        )
        np.testing.assert_array_equal(np.asarray(cold.tokens), np.asarray(greedy.tokens))


# ---------------------------------------------------------------- temperature 1 on the decoder


def test_sampling_reproducible_and_rng_dependent():
    params, _, _ = decoder()
    prompt, pmask = decoder_prompt()
    sampler = decoder_sampler(SamplingConfig(D_N, temperature=1.0))
    a = sampler(params, prompt, pmask, jax.random.key(7))
    b = sampler(params, prompt, pmask, jax.random.key(7))
    c = sampler(params, prompt, pmask, jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_decoder_rows_independent_of_other_rows_prompts():
    """Changing row 0's prompt (content and padding) leaves rows 1 and 2 unchanged."""
    params, _, _ = decoder()
    prompt, pmask = decoder_prompt()
    sampler = decoder_sampler(SamplingConfig(D_N, temperature=1.0))
    a = sampler(params, prompt, pmask, jax.random.key(3))
    prompt2 = prompt.at[0, :3].set(0).at[0, 3:].set(jnp.array([17, 4]))
    pmask2 = pmask.at[0, :3].set(False)
    b = sampler(params, prompt2, pmask2, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(a.tokens)[1:], np.asarray(b.tokens)[1:])
    assert int(b.prompt_lengths[0]) == 2


def test_one_compilation_for_repeated_calls():
    params, _, _ = decoder()
    cfg = SamplingConfig(D_N, temperature=1.0)
    sampler = decoder_sampler(cfg)  # shared with the other temperature-1 tests: same shapes
    prompt, pmask = decoder_prompt()
    prompt_b, pmask_b = decoder_prompt(seed=1)
    params2 = jax.tree.map(lambda x: x * 1.01, params)
    outs = [
        sampler(params, prompt, pmask, jax.random.key(0)),
        sampler(params, prompt_b, pmask_b, jax.random.key(1)),
        sampler(params2, prompt, pmask, jax.random.key(2)),
    ]
    jax.block_until_ready(outs)
    assert sampler._cache_size() == 1
    assert TRACES[cfg] == 2  # traced once: the prefill call and the while-loop body


# ---------------------------------------------------------------- top-k / top-p on a bigram model


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.5)])
def test_bigram_sampling_never_emits_filtered_tokens(kw):
    rng = np.random.default_rng(20)
    table = (2.0 * rng.standard_normal((V, V))).astype(np.float32)
    prompt, pmask = random_prompts(rng, 64, 3)
    cfg = SamplingConfig(8, temperature=1.0, **kw)
    out = bigram_sampler(cfg)(jnp.asarray(table), prompt, pmask, jax.random.key(0))
    tokens = np.asarray(out.tokens)
    prev = previous_tokens(prompt, tokens)
    keep = ref_keep(table[prev.reshape(-1)], cfg.top_k, cfg.top_p).reshape(64, 8, V)
    emitted_ok = np.take_along_axis(keep, tokens[..., None], axis=-1)[..., 0]
    assert emitted_ok.all(), np.argwhere(~emitted_ok)
    assert np.all(np.asarray(out.mask)) and int(out.num_steps) == 8
    # It is sampling, not argmax: a good share of tokens are not the context's argmax.
    assert np.mean(tokens != np.argmax(table[prev], axis=-1)) > 0.2


def test_bigram_top1_equals_greedy_chain():
    rng = np.random.default_rng(21)
    table = rng.standard_normal((V, V)).astype(np.float32)
    prompt, pmask = random_prompts(rng, 64, 3)
    out = bigram_sampler(SamplingConfig(8, temperature=1.0, top_k=1))(
        jnp.asarray(table), prompt, pmask, jax.random.key(5)
    )
    expected = np.zeros((64, 8), np.int64)
    last = prompt[:, -1]
    for j in range(8):
        last = np.argmax(table[last], axis=-1)
        expected[:, j] = last
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)


# ---------------------------------------------------------------- stop tokens and masks

STOP, STOP2, PAD_OUT = 2, 3, 36
STOP_CFG = SamplingConfig(8, temperature=1.0, stop_ids=(STOP, STOP2), pad_id=PAD_OUT)


def rigged_table(seed=30, chains=()):
    """Random table where stop tokens are (practically) never sampled, except along `chains`:
    each chain [t0, t1, ...] makes t_i lead to t_{i+1} with probability ~1."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, V)).astype(np.float32)
    table[:, [STOP, STOP2]] = -40.0
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            table[a] = -40.0
            table[a, b] = 40.0
    return jnp.asarray(table)


# Row A: 10 -> 11 -> 12 -> 5 -> STOP (emitted at step 3); STOP -> 13 if it were ever fed.
# Row B: 20 -> 21 -> ... -> 28, never stops in 8 steps.  Row C: 30 -> STOP2 at step 0.
# Row D: 14 -> 15 -> STOP at step 1.
CHAINS = ([10, 11, 12, 5, STOP, 13], list(range(20, 29)), [30, STOP2, 13], [14, 15, STOP])
STOP_TABLE = rigged_table(chains=CHAINS)


def run_rows(last_tokens, rng_seed=0, table=STOP_TABLE):
    """Prompts [B, 3] ending in `last_tokens` (row 0 left-padded), through STOP_CFG."""
    last = np.asarray(last_tokens, np.int32)
    prompt = np.stack([np.full_like(last, 7), np.full_like(last, 8), last], axis=1)
    pmask = np.ones(prompt.shape, bool)
    pmask[0, 0] = False
    return bigram_sampler(STOP_CFG)(table, prompt, pmask, jax.random.key(rng_seed))


def test_stop_token_kept_and_rest_padded_and_masked():
    out = run_rows([10, 20, 30])
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    np.testing.assert_array_equal(tokens[0], [11, 12, 5, STOP] + [PAD_OUT] * 4)
    np.testing.assert_array_equal(mask[0], [True] * 4 + [False] * 4)
    np.testing.assert_array_equal(tokens[1], list(range(21, 29)))
    assert mask[1].all()  # a row that never stops is valid throughout
    np.testing.assert_array_equal(tokens[2], [STOP2] + [PAD_OUT] * 7)  # any stop id stops
    np.testing.assert_array_equal(mask[2], [True] + [False] * 7)
    assert int(out.num_steps) == 8
    np.testing.assert_array_equal(np.asarray(out.prompt_lengths), [2, 3, 3])


def test_early_exit_when_every_row_stopped():
    out = run_rows([10, 30, 14])  # stops at steps 3, 0, 1
    assert int(out.num_steps) == 4
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    np.testing.assert_array_equal(tokens[:, 4:], PAD_OUT)
    assert not mask[:, 4:].any()
    np.testing.assert_array_equal(mask.sum(1), [4, 1, 2])
    assert int(run_rows([30, 30, 30]).num_steps) == 1


def test_early_stopping_row_does_not_change_other_rows():
    table = rigged_table(seed=31, chains=[[30, STOP2]])
    # Rows 1 and 2 sample freely (stops practically impossible unless they reach token 30).
    base = run_rows([10, 20, 25], rng_seed=4, table=table)
    stopped = run_rows([30, 20, 25], rng_seed=4, table=table)
    assert np.asarray(stopped.mask)[0].sum() == 1 and np.asarray(base.mask)[0].sum() > 1
    for field in ("tokens", "mask"):
        np.testing.assert_array_equal(
            np.asarray(getattr(stopped, field))[1:], np.asarray(getattr(base, field))[1:]
        )
    assert len(np.unique(np.asarray(base.tokens)[1:])) > 4  # they really sample


def test_random_stops_mask_invariants():
    """Rows stopping at random steps: the mask is a prefix ending at the first stop token."""
    rng = np.random.default_rng(40)
    table = jnp.asarray(rng.standard_normal((V, V)).astype(np.float32))
    sampler = bigram_sampler(STOP_CFG)  # the [3, 3] prompt shape of run_rows: no new compile
    n_stopped = 0
    for seed in range(16):
        prompt, pmask = random_prompts(rng, 3, 3)
        out = sampler(table, prompt, pmask, jax.random.key(seed))
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
        is_stop = np.isin(tokens, [STOP, STOP2])
        stopped = is_stop.any(1)
        first = np.where(stopped, np.argmax(is_stop, axis=1), 8)
        expected_mask = np.arange(8)[None, :] <= first[:, None]
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_array_equal(tokens[~mask], PAD_OUT)
        assert int(out.num_steps) == min(first.max() + 1, 8)
        n_stopped += stopped.sum()
    assert 0 < n_stopped < 48  # both kinds of rows occur


def test_fresh_randomness_every_step_and_row():
    """Uniform next-token logits: draws differ across steps and rows, and cover the vocab."""
    table = np.zeros((V, V), np.float32)
    table[:, [STOP, STOP2]] = -40.0  # uniform over the other 35 tokens, never stops
    seen = []
    for seed in range(4):
        tokens = np.asarray(run_rows([10, 10, 10], rng_seed=seed, table=jnp.asarray(table)).tokens)
        assert all(len(set(row)) > 2 for row in tokens)  # not one draw repeated per step
        assert not np.array_equal(tokens[1], tokens[2])  # rows with equal context differ
        seen.append(tokens)
    counts = np.bincount(np.concatenate(seen).ravel(), minlength=V)
    assert counts[STOP] == counts[STOP2] == 0
    assert np.count_nonzero(counts) >= 30  # 96 uniform draws over 35 tokens


def test_low_precision_logits_from_apply_fn():
    """An apply_fn returning bf16 logits must not break the while_loop's carried dtypes."""

    def bf16_apply(table, tokens, positions, mask, cache=None, cache_index=None):
        return table[tokens].astype(jnp.bfloat16), cache

    decoding = causal_lm_decoding(bf16_apply, bigram_init_cache)
    sampler = make_sampler(decoding, SamplingConfig(4, temperature=0.0))
    table = jnp.asarray(np.random.default_rng(50).standard_normal((V, V)), jnp.float32)
    prompt = jnp.ones((2, 3), jnp.int32)
    out = sampler(table, prompt, jnp.ones((2, 3), bool), jax.random.key(0))
    assert out.tokens.shape == (2, 4)
