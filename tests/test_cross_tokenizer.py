"""Cross-tokenizer objectives (gkd_jax/objectives/cross_tokenizer.py) against float64 numpy
references written from the definitions, and against today's same-tokenizer objectives
(policy_gradient.sampled_rkl_advantages, losses.generalized_jsd) when both sides tokenize alike."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import central_differences

from gkd_jax.objectives import cross_tokenizer as ct
from gkd_jax.objectives import losses, policy_gradient

V_S, V_T, K = 11, 13, 7
BETAS = [0.0, 0.3, 1.0]


# ---------------------------------------------------------------- random alignments


def random_alignment(seed, rows=4, n_s=12, n_t=10, uncounted=True):
    """(student_chunks [B, N_s], teacher_chunks [B, N_t], C): each row a random number of
    chunks of 1-3 tokens per side, then -1 padding. Row 1 has no chunk at all; with
    `uncounted`, row 0's second chunk loses its teacher tokens (text the aligner left out)."""
    rng = np.random.default_rng(seed)
    s = -np.ones((rows, n_s), np.int32)
    t = -np.ones((rows, n_t), np.int32)
    for b in range(rows):
        if b == 1:
            continue
        i = j = c = 0
        while True:
            ls, lt = rng.integers(1, 4, size=2)
            if i + ls > n_s or j + lt > n_t or rng.random() < 0.08:
                break
            s[b, i : i + ls], t[b, j : j + lt] = c, c
            i, j, c = i + ls, j + lt, c + 1
    if uncounted:
        t[0][t[0] == 1] = -1
    return s, t, min(n_s, n_t)


def partial_map(seed, k=K, v_s=V_S, v_t=V_T):
    rng = np.random.default_rng(seed)
    return (
        rng.permutation(v_s)[:k].astype(np.int32),
        rng.permutation(v_t)[:k].astype(np.int32),
    )


def random_logits(shape, seed, scale=2.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- numpy references (float64)


def ref_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def ref_kl(p, q):
    """sum p log(p / q), 0 log 0 = 0."""
    pos = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.where(pos, p * (np.log(np.where(pos, p, 1)) - np.log(q)), 0.0)))


def ref_jsd(s, t, beta):
    if beta == 0:
        return ref_kl(t, s)
    if beta == 1:
        return ref_kl(s, t)
    m = beta * t + (1 - beta) * s
    return beta * ref_kl(t, m) + (1 - beta) * ref_kl(s, m)


def ref_chunk_sums(token_logp, chunks, c):
    out = np.zeros((chunks.shape[0], c))
    for b, n in zip(*np.nonzero(chunks >= 0), strict=True):
        out[b, chunks[b, n]] += float(token_logp[b, n])
    return out


def ref_counted(s_chunks, t_chunks, c):
    return np.asarray(
        [
            [(row_s == i).any() and (row_t == i).any() for i in range(c)]
            for row_s, row_t in zip(s_chunks, t_chunks, strict=True)
        ]
    )


def ref_bins(p, ids):
    """p [V] on the matched ids and the tail: the sum of the unmatched probabilities."""
    return np.append(p[ids], np.delete(p, ids).sum())


def ref_uld(p_s, p_t, s_ids, t_ids):
    u_s = -np.sort(-np.delete(p_s, s_ids))
    u_t = -np.sort(-np.delete(p_t, t_ids))
    n = max(u_s.size, u_t.size)
    return float(np.abs(np.pad(u_s, (0, n - u_s.size)) - np.pad(u_t, (0, n - u_t.size))).sum())


def ref_per_chunk(s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c, beta, temp, uld_weight=None):
    """[B, C] per-chunk matched JSD (+ uld_weight * ULD) and the mask, from the definitions:
    at the row of each chunk's first token on each side."""
    mask = ref_counted(s_ch, t_ch, c)
    out = np.zeros(mask.shape)
    for b, i in zip(*np.nonzero(mask), strict=True):
        p_s = np.exp(ref_log_softmax(s_logits[b, np.argmax(s_ch[b] == i)] / temp))
        p_t = np.exp(ref_log_softmax(t_logits[b, np.argmax(t_ch[b] == i)] / temp))
        out[b, i] = ref_jsd(ref_bins(p_s, s_ids), ref_bins(p_t, t_ids), beta)
        if uld_weight is not None:
            out[b, i] += uld_weight * ref_uld(p_s, p_t, s_ids, t_ids)
    return out, mask


def ref_reduce(values, mask, reduction):
    if reduction == "token":
        return values[mask].sum(), mask.sum()
    rows = [values[b][mask[b]].mean() for b in range(len(mask)) if mask[b].any()]
    return sum(rows), len(rows)


def ref_advantages(k, mask, s_chunks, gamma):
    """-sum_{c' >= c} gamma^(c' - c) k_c' over counted c' for every student token of chunk c."""
    out = np.zeros(s_chunks.shape)
    for b, n in zip(*np.nonzero(s_chunks >= 0), strict=True):
        c = s_chunks[b, n]
        out[b, n] = -sum(gamma ** (j - c) * k[b, j] for j in range(c, k.shape[1]) if mask[b, j])
    return out


# ---------------------------------------------------------------- chunks and chunk_rkl


def test_chunk_log_probs_sum_to_the_sequence_log_prob():
    s_ch, t_ch, c = random_alignment(0, uncounted=False)
    for chunks, v, seed in ((s_ch, V_S, 1), (t_ch, V_T, 2)):
        logits = random_logits((*chunks.shape, v), seed)
        tokens = np.random.default_rng(seed).integers(0, v, chunks.shape)
        logp = policy_gradient.token_log_probs(jnp.asarray(logits), jnp.asarray(tokens))
        got = np.asarray(ct.chunk_log_probs(logp, jnp.asarray(chunks), c))  # [B, C]
        ref_tok = np.take_along_axis(ref_log_softmax(logits), tokens[..., None], -1)[..., 0]
        ref_tok[np.isnan(ref_tok)] = 0.0
        np.testing.assert_allclose(got, ref_chunk_sums(ref_tok, chunks, c), atol=1e-5)
        # every completion token sits in a chunk: the chunks' sum is log p(y) of the text
        np.testing.assert_allclose(
            got.sum(1), np.where(chunks >= 0, ref_tok, 0.0).sum(1), rtol=1e-5, atol=1e-5
        )


def test_chunk_positions_and_mask():
    s = jnp.asarray([[0, 0, 1, 2, 2, -1], [-1, -1, -1, -1, -1, -1]])
    t = jnp.asarray([[0, 1, 1, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(ct.chunk_first_positions(s, 4), [[0, 2, 3, 6], [6] * 4])
    np.testing.assert_array_equal(ct.chunk_last_positions(s, 4), [[1, 2, 4, -1], [-1] * 4])
    np.testing.assert_array_equal(ct.chunk_mask(s, t, 4), [[1, 1, 0, 0], [0] * 4])
    np.testing.assert_array_equal(
        ct.chunk_mask(s, t, 4, jnp.asarray([1, 0])), [[1, 0, 0, 0]] + [[0] * 4]
    )
    values = jnp.asarray([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    np.testing.assert_array_equal(ct.place_at_last_token(values, s), [[0, 1, 2, 0, 3, 0], [0] * 6])


def one_token_case(seed, lengths=(9, 5, 0)):
    """Both sides tokenize alike: chunk c = token c, C = N; rows of 9, 5 and 0 tokens."""
    n = 9
    mask = np.arange(n)[None] < np.asarray(lengths)[:, None]  # [B, N]
    chunks = np.where(mask, np.arange(n)[None], -1).astype(np.int32)
    rng = np.random.default_rng(seed)
    logp_s = jnp.asarray(-rng.exponential(size=mask.shape), jnp.float32)
    logp_t = jnp.asarray(-rng.exponential(size=mask.shape), jnp.float32)
    return logp_s, logp_t, jnp.asarray(chunks), jnp.asarray(mask), n


@pytest.mark.parametrize("gamma", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_chunk_rkl_with_one_token_chunks_is_sampled_rkl(gamma, reduction):
    logp_s, logp_t, chunks, mask, n = one_token_case(0)
    k, cmask = ct.chunk_rkl(logp_s, logp_t, chunks, chunks, n)
    k_tok = policy_gradient.sampled_rkl(logp_s, logp_t)
    np.testing.assert_array_equal(cmask, mask)
    np.testing.assert_array_equal(k, jnp.where(mask, k_tok, 0.0))
    np.testing.assert_array_equal(
        ct.chunk_rkl_advantages(k, cmask, chunks, gamma),
        policy_gradient.sampled_rkl_advantages(k_tok, mask, gamma),
    )
    # rl_step.sampled_rkl_terms's two outputs, before alpha
    _, count = losses.masked_sum_count(jnp.zeros(mask.shape), mask, reduction)
    w = policy_gradient.reduction_weights(mask, reduction, count)
    adv, div = ct.chunk_rkl_terms(logp_s, logp_t, chunks, chunks, w, gamma, n)
    np.testing.assert_array_equal(
        adv, w * policy_gradient.sampled_rkl_advantages(k_tok, mask, gamma)
    )
    np.testing.assert_array_equal(div, jnp.sum(jnp.where(mask, w * k_tok, 0.0)))


@pytest.mark.parametrize("gamma", [0.0, 0.7, 1.0])
def test_chunk_rkl_advantages_against_the_definition(gamma):
    s_ch, t_ch, c = random_alignment(3)
    rng = np.random.default_rng(4)
    logp_s = -rng.exponential(size=s_ch.shape).astype(np.float32)
    logp_t = -rng.exponential(size=t_ch.shape).astype(np.float32)
    k, mask = ct.chunk_rkl(*map(jnp.asarray, (logp_s, logp_t, s_ch, t_ch)), c)
    ref_mask = ref_counted(s_ch, t_ch, c)
    ref_k = np.where(ref_mask, ref_chunk_sums(logp_s, s_ch, c) - ref_chunk_sums(logp_t, t_ch, c), 0)
    np.testing.assert_array_equal(mask, ref_mask)
    assert not ref_mask[0, 1] and (s_ch[0] == 1).any()  # an uncounted chunk with student tokens
    np.testing.assert_allclose(k, ref_k, atol=1e-5)
    adv = ct.chunk_rkl_advantages(k, mask, jnp.asarray(s_ch), gamma)
    np.testing.assert_allclose(adv, ref_advantages(ref_k, ref_mask, s_ch, gamma), atol=1e-5)
    # sum over a row's counted chunks = log p_S(y) - log p_T(y), rows where every chunk counts
    full = ref_mask.sum(1) == np.asarray([len(set(r[r >= 0])) for r in s_ch])
    seq = np.where(s_ch >= 0, logp_s, 0).sum(1) - np.where(t_ch >= 0, logp_t, 0).sum(1)
    np.testing.assert_allclose(np.asarray(k).sum(1)[full], seq[full], atol=1e-5)


def test_chunk_credit_at_gamma_one_is_the_token_reward_to_go_of_the_last_tokens():
    """gamma = 1: crediting k_c to chunk c's last student token and summing the token-level
    reward-to-go gives exactly the chunk-level advantages."""
    s_ch, t_ch, c = random_alignment(5, uncounted=False)
    rng = np.random.default_rng(6)
    k = jnp.asarray(rng.normal(size=(s_ch.shape[0], c)), jnp.float32)
    mask = ct.chunk_mask(jnp.asarray(s_ch), jnp.asarray(t_ch), c)
    k = jnp.where(mask, k, 0.0)
    placed = ct.place_at_last_token(k, jnp.asarray(s_ch))
    token_rtg = policy_gradient.reward_to_go(placed, jnp.asarray(s_ch >= 0), 1.0)
    np.testing.assert_allclose(
        ct.chunk_rkl_advantages(k, mask, jnp.asarray(s_ch), 1.0), -token_rtg, atol=1e-6
    )


def test_chunk_rkl_policy_gradient_reaches_only_the_student():
    s_ch, t_ch, c = random_alignment(7)
    s_logits = jnp.asarray(random_logits((*s_ch.shape, V_S), 8))
    t_logits = jnp.asarray(random_logits((*t_ch.shape, V_T), 9))
    ys = jnp.asarray(np.random.default_rng(10).integers(0, V_S, s_ch.shape))
    yt = jnp.asarray(np.random.default_rng(11).integers(0, V_T, t_ch.shape))
    smask = jnp.asarray(s_ch >= 0)

    def loss(s, t):
        logp = policy_gradient.token_log_probs(s, ys)
        w = policy_gradient.reduction_weights(smask, "sequence", jnp.float32(3.0))
        adv, _ = ct.chunk_rkl_terms(
            logp,
            policy_gradient.token_log_probs(t, yt),
            jnp.asarray(s_ch),
            jnp.asarray(t_ch),
            w,
            0.9,
            c,
        )
        return policy_gradient.policy_gradient_loss(logp, adv, smask)[0]

    g_s, g_t = jax.jit(jax.grad(loss, argnums=(0, 1)))(s_logits, t_logits)
    assert np.all(np.isfinite(g_s)) and np.any(g_s != 0)
    np.testing.assert_array_equal(g_t, 0.0)


# ---------------------------------------------------------------- matched_jsd and hybrid_uld


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_matched_jsd_with_one_tokenizer_is_the_token_jsd(beta, temperature, reduction):
    b, n, v = 3, 7, 17
    s = jnp.asarray(random_logits((b, n, v), 0))
    t = jnp.asarray(random_logits((b, n, v), 1))
    mask = np.arange(n)[None] < np.asarray([7, 4, 0])[:, None]
    chunks = jnp.asarray(np.where(mask, np.arange(n)[None], -1), jnp.int32)
    ids = jnp.arange(v, dtype=jnp.int32)
    kw = dict(beta=beta, num_chunks_max=n, temperature=temperature)
    per_chunk, cmask = ct.matched_jsd_per_chunk(s, t, chunks, chunks, ids, ids, **kw)
    per_token = losses.generalized_jsd(s, t, beta=beta, temperature=temperature)
    np.testing.assert_array_equal(cmask, mask)
    np.testing.assert_array_equal(np.where(mask, per_chunk, 0), np.where(mask, per_token, 0))
    got = ct.matched_jsd(s, t, chunks, chunks, ids, ids, reduction=reduction, **kw)
    want = losses.masked_sum_count(per_token, jnp.asarray(mask), reduction)
    np.testing.assert_array_equal(got, want)
    hybrid = ct.hybrid_uld(s, t, chunks, chunks, ids, ids, reduction=reduction, **kw)
    np.testing.assert_array_equal(hybrid, want)  # no unmatched ids: ULD is 0


def matched_case(seed, rows=4):
    s_ch, t_ch, c = random_alignment(seed, rows=rows)
    s_logits = random_logits((*s_ch.shape, V_S), seed + 1)
    t_logits = random_logits((*t_ch.shape, V_T), seed + 2)
    s_ids, t_ids = partial_map(seed + 3)
    return s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_matched_jsd_on_a_partial_map_against_the_definition(beta, reduction):
    s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c = case = matched_case(20)
    for temperature in (1.0, 0.7):
        ref, ref_mask = ref_per_chunk(*case[:6], c, beta, temperature)
        args = [jnp.asarray(x) for x in case[:6]]
        kw = dict(beta=beta, num_chunks_max=c, temperature=temperature)
        got, mask = ct.matched_jsd_per_chunk(*args, **kw)
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_allclose(np.where(ref_mask, got, 0), ref, rtol=2e-5, atol=1e-6)
        total, count = ct.matched_jsd(*args, reduction=reduction, **kw)
        ref_total, ref_count = ref_reduce(ref, ref_mask, reduction)
        np.testing.assert_allclose(total, ref_total, rtol=2e-5)
        assert float(count) == ref_count


@pytest.mark.parametrize("beta", BETAS)
def test_hybrid_uld_against_the_definition(beta):
    case = matched_case(30)
    c = case[-1]
    ref, ref_mask = ref_per_chunk(*case[:6], c, beta, 1.5, uld_weight=0.4)
    args = [jnp.asarray(x) for x in case[:6]]
    total, count = ct.hybrid_uld(
        *args, beta=beta, num_chunks_max=c, temperature=1.5, uld_weight=0.4, reduction="token"
    )
    np.testing.assert_allclose(total, ref[ref_mask].sum(), rtol=2e-5)
    assert float(count) == ref_mask.sum()


def test_uld_pads_the_shorter_side_and_ignores_matched_ids():
    rng = np.random.default_rng(40)
    p_s, p_t = rng.dirichlet(np.ones(V_S)), rng.dirichlet(np.ones(V_T))
    s_ids, t_ids = partial_map(41)
    got = ct.uld_unmatched(
        jnp.log(jnp.asarray(p_s, jnp.float32)),
        jnp.log(jnp.asarray(p_t, jnp.float32)),
        jnp.asarray(s_ids),
        jnp.asarray(t_ids),
    )
    np.testing.assert_allclose(got, ref_uld(p_s, p_t, s_ids, t_ids), rtol=1e-5)
    # the student has V_S - K = 4 unmatched ids, the teacher 6: two teacher entries are unpaired
    assert V_S - K == 4 and V_T - K == 6


@functools.partial(jax.jit, static_argnames=("name", "c", "beta", "reduction", "uld_weight"))
def loss_and_grad(s, t, s_ch, t_ch, s_ids, t_ids, *, name, c, beta, reduction, uld_weight=0.7):
    """(mean loss of objective `name`, its gradient w.r.t. the student's logits s). Every
    array is an argument: a closed-over teacher would be constant-folded by XLA (minutes for a
    sort over 262,144 entries)."""
    fn = ct.matched_jsd
    if name == "hybrid_uld":
        fn = functools.partial(ct.hybrid_uld, uld_weight=uld_weight)

    def loss(s):
        out = fn(s, t, s_ch, t_ch, s_ids, t_ids, beta=beta, num_chunks_max=c, reduction=reduction)
        return losses.mean_from_sum_count(*out)

    return jax.value_and_grad(loss)(s)


def run_objective(name, case, beta=0.5, reduction="sequence", uld_weight=0.7):
    *arrays, c = case
    arrays = [jnp.asarray(x) for x in arrays]
    kw = dict(name=name, c=c, beta=beta, reduction=reduction, uld_weight=uld_weight)
    return loss_and_grad(*arrays, **kw)


@pytest.mark.parametrize("name", ["matched_jsd", "hybrid_uld"])
def test_gradients_match_finite_differences_of_the_reference(name):
    case = matched_case(50, rows=3)
    s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c = case
    uld_weight = None if name == "matched_jsd" else 0.7

    def ref_loss(s):
        values, mask = ref_per_chunk(s, t_logits, s_ch, t_ch, s_ids, t_ids, c, 0.5, 1.0, uld_weight)
        total, count = ref_reduce(values, mask, "sequence")
        return total / max(count, 1)

    _, got = run_objective(name, case)
    np.testing.assert_allclose(got, central_differences(ref_loss, s_logits), atol=2e-5)


@pytest.mark.parametrize("name", ["matched_jsd", "hybrid_uld"])
@pytest.mark.parametrize("beta", BETAS)
def test_padding_and_uncounted_chunks_contribute_nothing(name, beta):
    """NaN logits at padding rows and any logits at uncounted chunks' rows change neither the
    loss nor the gradient of the rest; their own gradient is 0."""
    case = matched_case(60)
    s_logits, t_logits, s_ch, t_ch = case[:4]
    c = case[-1]
    used_s = np.zeros(s_ch.shape, bool)
    mask = ref_counted(s_ch, t_ch, c)
    for b, i in zip(*np.nonzero(mask), strict=True):
        used_s[b, np.argmax(s_ch[b] == i)] = True
    used_t = np.zeros(t_ch.shape, bool)
    for b, i in zip(*np.nonzero(mask), strict=True):
        used_t[b, np.argmax(t_ch[b] == i)] = True
    assert (~used_s & (s_ch >= 0)).any()  # rows of uncounted chunks or non-first tokens exist
    junk_s = np.where(used_s[..., None], s_logits, np.nan).astype(np.float32)
    junk_t = np.where(used_t[..., None], t_logits, -np.inf).astype(np.float32)
    v0, g0 = run_objective(name, case, beta)
    v1, g1 = run_objective(name, (junk_s, junk_t, *case[2:]), beta)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    assert np.all(np.isfinite(g1))
    np.testing.assert_allclose(g1, g0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g1)[~used_s], 0.0)


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_no_counted_chunk_gives_zero_not_nan(reduction):
    s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c = matched_case(70)
    empty_s, empty_t = -np.ones_like(s_ch), -np.ones_like(t_ch)
    case = (s_logits, t_logits, empty_s, empty_t, s_ids, t_ids, c)
    for name in ("matched_jsd", "hybrid_uld"):
        value, grad = run_objective(name, case, 0.5, reduction)
        assert float(value) == 0.0
        np.testing.assert_array_equal(grad, 0.0)
    k, mask = ct.chunk_rkl(
        jnp.zeros(s_ch.shape), jnp.zeros(t_ch.shape), jnp.asarray(empty_s), jnp.asarray(empty_t), c
    )
    assert not np.any(mask) and np.all(k == 0)
    adv = ct.chunk_rkl_advantages(k, mask, jnp.asarray(empty_s), 1.0)
    np.testing.assert_array_equal(adv, 0.0)


def test_jit_with_a_static_chunk_count_matches_eager():
    s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, c = matched_case(80)
    args = [jnp.asarray(x) for x in (s_logits, t_logits, s_ch, t_ch, s_ids, t_ids)]
    static = ("beta", "num_chunks_max", "reduction")
    for fn, kw in ((ct.matched_jsd, {}), (ct.hybrid_uld, dict(uld_weight=0.5))):
        jitted = jax.jit(fn, static_argnames=static)
        got = jitted(*args, beta=0.5, num_chunks_max=c, reduction="token", **kw)
        want = fn(*args, beta=0.5, num_chunks_max=c, reduction="token", **kw)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    rkl = jax.jit(ct.chunk_rkl, static_argnums=4)
    lp_s, lp_t = jnp.zeros(s_ch.shape) - 1.0, jnp.zeros(t_ch.shape) - 2.0
    k, _ = rkl(lp_s, lp_t, args[2], args[3], c)
    np.testing.assert_array_equal(k, ct.chunk_rkl(lp_s, lp_t, args[2], args[3], c)[0])


# ---------------------------------------------------------------- real vocabulary sizes

REAL_V_S, REAL_V_T, REAL_K = 49_152, 262_144, 30_000


def test_real_vocabularies_small_batch_against_the_reference():
    """SmolLM2's and Gemma 3's vocabulary sizes, one row: values against the reference, a
    finite gradient."""
    s_ch = np.asarray([[0, 1, 1, 2, 3]], np.int32)
    t_ch = np.asarray([[0, 0, 1, 2]], np.int32)
    s_logits = random_logits((1, 5, REAL_V_S), 90)
    t_logits = random_logits((1, 4, REAL_V_T), 91)
    s_ids, t_ids = partial_map(92, REAL_K, REAL_V_S, REAL_V_T)
    case = (s_logits, t_logits, s_ch, t_ch, s_ids, t_ids, 4)
    ref, mask = ref_per_chunk(*case[:6], 4, 0.5, 1.0, uld_weight=0.3)
    assert mask.sum() == 3  # chunk 3 has no teacher tokens
    value, grad = run_objective("hybrid_uld", case, 0.5, "token", uld_weight=0.3)
    np.testing.assert_allclose(value, ref[mask].mean(), rtol=1e-4)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def real_specs(b, n, c):
    spec = jax.ShapeDtypeStruct
    return (
        spec((b, n, REAL_V_S), jnp.bfloat16),
        spec((b, n, REAL_V_T), jnp.bfloat16),
        spec((b, n), jnp.int32),
        spec((b, n), jnp.int32),
        spec((REAL_K,), jnp.int32),
        spec((REAL_K,), jnp.int32),
    )


def test_real_vocabularies_shapes_and_memory():
    """B = 4, N = 512 at the real vocabularies, abstractly: the outputs' shapes, and the
    compiled gradient's temporaries: a few float32 [B, C, V_s + V_t] chunk-start rows, growing
    with C (positions are gathered first), not with N."""
    b, n = 4, 512
    kw = dict(beta=0.5, num_chunks_max=128)
    for fn in (ct.matched_jsd, ct.hybrid_uld):
        out = jax.eval_shape(functools.partial(fn, **kw), *real_specs(b, n, 128))
        assert [o.shape for o in out] == [(), ()]
    per_chunk = jax.eval_shape(
        functools.partial(ct.matched_jsd_per_chunk, **kw), *real_specs(b, n, 128)
    )
    assert [o.shape for o in per_chunk] == [(b, 128), (b, 128)]
    for fn in (ct.matched_jsd, ct.hybrid_uld):
        temp = {}
        for c in (32, 128):
            grad = jax.jit(jax.grad(lambda *a, fn=fn, c=c: fn(*a, beta=0.5, num_chunks_max=c)[0]))
            memory = grad.lower(*real_specs(b, n, c)).compile().memory_analysis()
            temp[c] = memory.temp_size_in_bytes
            rows = b * c * (REAL_V_S + REAL_V_T) * 4  # float32 chunk-start rows, both sides
            assert temp[c] < 5 * rows, (fn.__name__, c, temp[c] / rows)
        assert temp[32] < 0.4 * temp[128]  # linear in C


# ---------------------------------------------------------------- host-side checks


def test_host_checks():
    ct.check_vocab_map(np.asarray([0, 2]), np.asarray([5, 1]), 3, 6)
    with pytest.raises(ValueError, match="repeat"):
        ct.check_vocab_map(np.asarray([0, 0]), np.asarray([5, 1]), 3, 6)
    with pytest.raises(ValueError, match="out of range"):
        ct.check_vocab_map(np.asarray([0, 3]), np.asarray([5, 1]), 3, 6)
    ct.check_chunks(np.asarray([[0, 0, 1, -1]]), np.asarray([[0, 1, -1]]), 2)
    with pytest.raises(ValueError, match="lie in"):
        ct.check_chunks(np.asarray([[0, 2]]), np.asarray([[0, 1]]), 2)
    with pytest.raises(ValueError, match="decrease"):
        ct.check_chunks(np.asarray([[1, 0]]), np.asarray([[0, 1]]), 2)
    with pytest.raises(ValueError, match="must agree"):
        ct.matched_jsd(
            jnp.zeros((1, 3, 5)),
            jnp.zeros((1, 2, 5)),
            jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2), jnp.int32),
            jnp.arange(5),
            jnp.arange(5),
            beta=0.5,
            num_chunks_max=2,
        )
