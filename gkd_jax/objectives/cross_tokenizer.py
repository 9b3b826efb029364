"""Distillation across tokenizers: the student and the teacher tokenize the same completion text
differently, and the objectives compare them on **chunks**, pure functions over arrays.

Inputs (built on the host by the aligner, per batch):

  student_chunks  int32 [B, N_s]  chunk index (0 .. C-1, in text order) of each student
                                  completion token; -1 for padding or tokens left out
  teacher_chunks  int32 [B, N_t]  the same for the teacher's tokenization of the same text
  student_ids, teacher_ids  int32 [K]  the vocabulary map: student_ids[k] and teacher_ids[k]
                                  have the same text; distinct on each side (check_vocab_map)

A chunk is a maximal span of text whose boundaries are token boundaries in both tokenizations,
so it holds >= 1 consecutive tokens on each side; with one tokenizer every chunk is one token.
A chunk counts (chunk_mask) only where it has tokens on both sides. C = `num_chunks_max` is
static; C = min(N_s, N_t) suffices while every chunk keeps a token on each side (chunks whose
one side was left out may need up to N_s + N_t). Chunk ids >= C are dropped, so a C that is
too small loses the text's end silently: check_chunks catches it on the host.

Token log-probabilities and logits follow LMFunctions.score: row n predicts completion token n
from the prompt and the completion tokens before it, so on each side

  log p(c)            = sum of the chunk's token log-probs        (chunk_log_probs)
  sum_c log p(c)      = log p(y), the log-probability of the whole completion in that
                        model's tokenization (the teacher scores its own ids)
  row first(c)        = the next-token distribution after the text of chunks 0 .. c-1: both
                        models predict "the next token" from the same text (chunk 0: from the
                        prompt), so these rows are comparable (chunk_start_log_probs).

Three objectives:
  chunk_rkl     the exact sequence-level log-ratio log p_S(c) - log p_T(c) per chunk, trained by
                policy gradient as policy_gradient.sampled_rkl is per token (chunk_rkl_terms);
  matched_jsd   losses.generalized_jsd between the two next-token distributions at each chunk
                start, collapsed onto the K matched vocabulary strings + one tail bin each;
  hybrid_uld    matched_jsd + uld_weight * ULD (the L1 distance between the two sides'
                unmatched probabilities sorted in decreasing order): TRL GOLD's hybrid.
With one tokenizer and the identity map each equals today's same-tokenizer objective exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.objectives import losses, policy_gradient

CROSS_TOKENIZER_OBJECTIVES = ("chunk_rkl", "matched_jsd", "hybrid_uld")


# ---------------------------------------------------------------- chunks


def _rows(chunks: jax.Array) -> jax.Array:
    return jnp.arange(chunks.shape[0])[:, None]  # [B, 1]


def _scatter_index(chunks: jax.Array, num_chunks_max: int) -> jax.Array:
    """[B, N] chunk ids with -1 sent out of range, so `.at[...](mode="drop")` skips them."""
    return jnp.where(chunks >= 0, chunks, num_chunks_max).astype(jnp.int32)


def chunk_first_positions(chunks: jax.Array, num_chunks_max: int) -> jax.Array:
    """[B, C] int32: the position of each chunk's first token in chunks [B, N], N where the
    chunk has no token on this side."""
    b, n = chunks.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))  # [B, N]
    first = jnp.full((b, num_chunks_max), n, jnp.int32)  # [B, C]
    return first.at[_rows(chunks), _scatter_index(chunks, num_chunks_max)].min(pos, mode="drop")


def chunk_last_positions(chunks: jax.Array, num_chunks_max: int) -> jax.Array:
    """[B, C] int32: the position of each chunk's last token in chunks [B, N], -1 where the
    chunk has no token on this side."""
    b, n = chunks.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))  # [B, N]
    last = jnp.full((b, num_chunks_max), -1, jnp.int32)  # [B, C]
    return last.at[_rows(chunks), _scatter_index(chunks, num_chunks_max)].max(pos, mode="drop")


def chunk_mask(
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    num_chunks_max: int,
    num_chunks: jax.Array | None = None,
) -> jax.Array:
    """[B, C] bool: chunk c of row b counts, i.e. it has tokens on both sides (and c <
    num_chunks[b] when given). A chunk with tokens on one side only is text that one side could
    not align (the aligner gave the other side's tokens -1): neither objective can use it."""
    has_s = chunk_first_positions(student_chunks, num_chunks_max) < student_chunks.shape[1]
    has_t = chunk_first_positions(teacher_chunks, num_chunks_max) < teacher_chunks.shape[1]
    mask = has_s & has_t  # [B, C]
    if num_chunks is not None:
        mask &= jnp.arange(num_chunks_max)[None, :] < num_chunks[:, None]
    return mask


def chunk_log_probs(token_logp: jax.Array, chunks: jax.Array, num_chunks_max: int) -> jax.Array:
    """[B, C] float32: each chunk's log-probability, the sum of its tokens' log-probs
    token_logp [B, N] (a segment sum; tokens with chunk -1 are ignored, and an empty chunk
    gives 0). Differentiable: the gradient of chunk c reaches exactly its tokens."""
    valid = chunks >= 0  # [B, N]
    # Padding rows may hold -inf/NaN log-probs: select them away rather than multiply by 0.
    values = jnp.where(valid, token_logp.astype(jnp.float32), 0.0)  # [B, N]
    out = jnp.zeros((chunks.shape[0], num_chunks_max), jnp.float32)  # [B, C]
    return out.at[_rows(chunks), _scatter_index(chunks, num_chunks_max)].add(values, mode="drop")


def gather_chunks(values: jax.Array, chunks: jax.Array) -> jax.Array:
    """values [B, C] read at each token's chunk: [B, N], 0 where the token has no chunk (-1 or
    >= C)."""
    c = values.shape[1]
    valid = (chunks >= 0) & (chunks < c)  # [B, N]
    out = jnp.take_along_axis(values, jnp.clip(chunks, 0, c - 1), axis=1)  # [B, N]
    return jnp.where(valid, out, 0.0)


def place_at_last_token(values: jax.Array, chunks: jax.Array) -> jax.Array:
    """values [B, C] put on the token grid [B, N] at each chunk's last token, 0 elsewhere."""
    last = chunk_last_positions(chunks, values.shape[1])  # [B, C]
    is_last = jnp.arange(chunks.shape[1])[None, :] == gather_chunks(last, chunks)  # [B, N]
    return jnp.where(is_last & (chunks >= 0), gather_chunks(values, chunks), 0.0)


# ---------------------------------------------------------------- chunk_rkl: sequence level


def chunk_rkl(
    student_logp: jax.Array,
    teacher_logp: jax.Array,
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    num_chunks_max: int,
    num_chunks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(k [B, C], chunk mask [B, C]): the per-chunk log-ratio k_c = log p_S(c) - log p_T(c),
    held constant (stop_gradient) like policy_gradient.sampled_rkl, 0 on masked chunks.

    student_logp [B, N_s]: log p_S of the student's sampled tokens (policy_gradient.
    token_log_probs); teacher_logp [B, N_t]: log p_T of the teacher's tokens of the same text,
    scored by the teacher on its own ids (its logits divided by gkd.teacher_temperature first,
    as sampled_rkl_terms does). Where every chunk of a row counts, sum_c k_c = log p_S(y) -
    log p_T(y) of the completion text exactly (see chunk_rkl_advantages for what it trains)."""
    mask = chunk_mask(student_chunks, teacher_chunks, num_chunks_max, num_chunks)  # [B, C]
    log_s = chunk_log_probs(student_logp, student_chunks, num_chunks_max)  # [B, C]
    log_t = chunk_log_probs(teacher_logp, teacher_chunks, num_chunks_max)  # [B, C]
    return jax.lax.stop_gradient(jnp.where(mask, log_s - log_t, 0.0)), mask


def chunk_rkl_advantages(
    k: jax.Array, mask: jax.Array, student_chunks: jax.Array, gamma: float
) -> jax.Array:
    """The per-token advantages [B, N_s] of the chunk-level sampled reverse KL: the token in
    chunk c gets  A = -sum_{c' >= c} gamma^(c' - c) k_c'  over the counted chunks c' (k, mask
    [B, C] from chunk_rkl; the discount counts chunks).

    Where the log-ratio is credited: k_c is credited to chunk c's last student token, and the
    reward-to-go runs over chunks, every token of a chunk sharing its chunk's. k_c depends on
    all of chunk c's student tokens (the chunk's text is only complete at its last token), so
    each of them must see it; chunks that end before a token are its past. With gamma = 1 this
    is exactly the token-level reward-to-go of the values placed at the chunks' last tokens
    (place_at_last_token); with one-token chunks (one tokenizer, chunk c = token c) it is
    exactly policy_gradient.sampled_rkl_advantages(k, mask, gamma) on the token grid.
    gamma = 0: each chunk's own log-ratio only, as sampled_rkl's default is its own token's.

    What it estimates. With the surrogate policy_gradient.policy_gradient_loss(log p_S(y_t),
    A_t, ...) on completions y ~ p_S (no gradient through the sampling) and gamma = 1, the
    expected gradient is

        grad_theta  E_{y ~ p_S} [ log p_S(y) - log p_T(tau_T(text(y))) ]

    the sequence-level reverse KL(p_S || p_T) between the two models' distributions over
    completion texts, where each model's probability of a text is that of one tokenization:
    the student's sampled one, the teacher's canonical tau_T (its tokenizer's output; the sum
    over all tokenizations is not computed). It is NOT the per-position token KL of losses.py:
    the two models have no common positions. Caveat: dropping the chunks that end before token t
    (reward-to-go) assumes they do not depend on y_t; chunk boundaries can depend on later text
    (a teacher merge across the boundary), which biases that variance reduction slightly.
    A chunk that does not count has k = 0, but its student tokens still get the later chunks'
    return (they shape the future); tokens without a chunk (-1) get 0."""
    c = k.shape[1]
    # The student side of every chunk with student tokens: an uncounted chunk's tokens still
    # receive the discounted future, as a masked-out token of sampled_rkl never does.
    has_s = chunk_first_positions(student_chunks, c) < student_chunks.shape[1]  # [B, C]
    rtg = policy_gradient.reward_to_go(jnp.where(mask, k, 0.0), has_s, gamma)  # [B, C]
    return -gather_chunks(rtg, student_chunks)


def chunk_rkl_terms(
    student_logp: jax.Array,
    teacher_logp: jax.Array,
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    weights: jax.Array,
    gamma: float,
    num_chunks_max: int,
    num_chunks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(per-token advantages [B, N_s], the divergence's weighted sum) for rl_step, the
    cross-tokenizer counterpart of rl_step.sampled_rkl_terms before its alpha:

      advantages = weights * chunk_rkl_advantages(...)
      divergence = sum over counted chunks of weights[last student token of c] * k_c

    `weights` [B, N_s] are policy_gradient.reduction_weights of the student's completion mask
    (constant along a row under both reductions, so weighting tokens weights rows): the
    divergence is in nats per student completion token, and with one tokenizer both outputs
    equal sampled_rkl_terms's. The caller adds (1 - alpha) times the reward advantages, as
    today, and passes the sum to policy_gradient.policy_gradient_loss with the student's
    log-probs and completion mask."""
    k, mask = chunk_rkl(
        student_logp, teacher_logp, student_chunks, teacher_chunks, num_chunks_max, num_chunks
    )  # [B, C] each
    w = weights.astype(jnp.float32)  # [B, N_s]
    adv = w * chunk_rkl_advantages(k, mask, student_chunks, gamma)  # [B, N_s]
    return adv, jnp.sum(w * place_at_last_token(k, student_chunks))


# ---------------------------------------------------------------- next-token distributions


def chunk_start_log_probs(
    logits: jax.Array,
    chunks: jax.Array,
    mask: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    """[B, C, V] float32 log-softmax(logits / temperature) at the row predicting each chunk's
    first token (logits [B, N, V], any float dtype; log-probabilities work too: log_softmax
    renormalizes them to the same tempered distribution). Positions are gathered before
    anything is done over the vocabulary, so the work is C rows per sequence, not N. Rows of
    chunks outside `mask` [B, C] are zeros (a uniform distribution): whatever the padded
    positions hold (NaN, -inf), neither the value nor the gradient sees it."""
    n = logits.shape[1]
    first = jnp.minimum(chunk_first_positions(chunks, mask.shape[1]), n - 1)  # [B, C]
    rows = jnp.take_along_axis(logits, first[:, :, None], axis=1)  # [B, C, V]
    rows = jnp.where(mask[:, :, None], rows.astype(jnp.float32), 0.0)
    return jax.nn.log_softmax(rows / temperature, axis=-1)


def _log_mass_outside(logp: jax.Array, ids: jax.Array) -> jax.Array:
    """log sum_{v not in ids} p(v) [...] for logp [..., V] and one id set ids [K] for all
    positions; -inf (zero gradient, not NaN) where the ids cover the vocabulary."""
    outside = jnp.ones(logp.shape[-1], bool).at[ids].set(False)  # [V]
    nonempty = jnp.any(outside)
    # Double `where` (as sparse_teacher.log_mass_outside): an empty tail gets a finite stand-in
    # so its logsumexp's gradient is not NaN, and the outer `where` sends -inf.
    x = jnp.where(outside, logp, -jnp.inf)  # [..., V]
    x = jnp.where(nonempty, x, 0.0)
    return jnp.where(nonempty, jax.nn.logsumexp(x, axis=-1), -jnp.inf)


def matched_bins(logp: jax.Array, ids: jax.Array, tail: bool) -> jax.Array:
    """logp [..., V] collapsed onto the matched ids [K] (in the map's order) and, with `tail`,
    one last bin holding the mass of every other id: [..., K (+ 1)], still normalized."""
    matched = jnp.take(logp, ids, axis=-1)  # [..., K]
    if not tail:
        return matched
    return jnp.concatenate([matched, _log_mass_outside(logp, ids)[..., None]], axis=-1)


def _check_inputs(s_logits, t_logits, s_chunks, t_chunks, s_ids, t_ids) -> bool:
    """Raises on inconsistent shapes; returns whether the map covers both vocabularies (K = V_s
    = V_t: distinct ids then leave both tails empty, and the tail bin is dropped statically)."""
    if s_logits.ndim != 3 or t_logits.ndim != 3:
        raise ValueError(f"logits must be [B, N, V], got {s_logits.shape} and {t_logits.shape}")
    if s_logits.shape[:2] != s_chunks.shape or t_logits.shape[:2] != t_chunks.shape:
        raise ValueError(
            f"logits {s_logits.shape[:2]} / {t_logits.shape[:2]} and chunk arrays "
            f"{s_chunks.shape} / {t_chunks.shape} must agree on [B, N] per side"
        )
    if s_chunks.shape[0] != t_chunks.shape[0]:
        raise ValueError(f"batch sizes differ: {s_chunks.shape[0]} vs {t_chunks.shape[0]}")
    if s_ids.ndim != 1 or s_ids.shape != t_ids.shape:
        raise ValueError(
            f"the vocabulary map needs two [K] arrays, got {s_ids.shape}, {t_ids.shape}"
        )
    k, v_s, v_t = s_ids.shape[0], s_logits.shape[-1], t_logits.shape[-1]
    if k > min(v_s, v_t):
        raise ValueError(f"the map has K={k} ids, more than a vocabulary (V_s={v_s}, V_t={v_t})")
    return k == v_s == v_t


def _matched_log_probs(s_logits, t_logits, s_chunks, t_chunks, s_ids, t_ids, c, temp, nc):
    """(student [B, C, V_s], teacher [B, C, V_t] chunk-start log-probs, chunk mask [B, C],
    whether a tail bin is needed). The teacher gets no gradient."""
    full = _check_inputs(s_logits, t_logits, s_chunks, t_chunks, s_ids, t_ids)
    mask = chunk_mask(s_chunks, t_chunks, c, nc)  # [B, C]
    logp_s = chunk_start_log_probs(s_logits, s_chunks, mask, temperature=temp)  # [B, C, V_s]
    t_logits = jax.lax.stop_gradient(t_logits)
    logp_t = chunk_start_log_probs(t_logits, t_chunks, mask, temperature=temp)  # [B, C, V_t]
    return logp_s, logp_t, mask, not full


def _jsd_per_chunk(logp_s, logp_t, s_ids, t_ids, tail: bool, beta: float) -> jax.Array:
    """The generalized JSD(beta) [B, C] between the two sides' (K + 1)-bin distributions."""
    s_ids, t_ids = s_ids.astype(jnp.int32), t_ids.astype(jnp.int32)
    log_s = matched_bins(logp_s, s_ids, tail)  # [B, C, K (+ 1)]
    log_t = matched_bins(logp_t, t_ids, tail)  # [B, C, K (+ 1)]
    return losses.jsd_from_log_probs(log_s, log_t, beta=beta)


def _matched_jsd(
    s_logits, t_logits, s_chunks, t_chunks, s_ids, t_ids, beta, num_chunks_max, temperature,
    num_chunks,
):  # fmt: skip
    """(JSD(beta) [B, C], chunk mask [B, C], logp_s [B, C, V_s], logp_t [B, C, V_t]) at the
    chunk starts: what matched_jsd and hybrid_uld share (hybrid_uld's ULD reads the log-probs)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    logp_s, logp_t, mask, tail = _matched_log_probs(
        s_logits, t_logits, s_chunks, t_chunks, s_ids, t_ids, num_chunks_max, temperature,
        num_chunks,
    )  # fmt: skip
    jsd = _jsd_per_chunk(logp_s, logp_t, s_ids, t_ids, tail, float(beta))
    return jsd, mask, logp_s, logp_t


def matched_jsd_per_chunk(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    student_ids: jax.Array,
    teacher_ids: jax.Array,
    *,
    beta: float,
    num_chunks_max: int,
    temperature: float | jax.Array = 1.0,
    num_chunks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(JSD [B, C] float32, chunk mask [B, C]): the generalized JSD(beta) of losses.py at every
    chunk start between the student's and the teacher's next-token distributions collapsed
    onto K + 1 bins (matched_jsd's docstring). Uncounted chunks hold finite junk: mask them."""
    jsd, mask, _, _ = _matched_jsd(
        student_logits, teacher_logits, student_chunks, teacher_chunks, student_ids,
        teacher_ids, beta, num_chunks_max, temperature, num_chunks,
    )  # fmt: skip
    return jsd, mask


def matched_jsd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    student_ids: jax.Array,
    teacher_ids: jax.Array,
    *,
    beta: float,
    num_chunks_max: int,
    reduction: str = "sequence",
    temperature: float | jax.Array = 1.0,
    num_chunks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(sum, count) float32 scalars, loss = sum / count (losses.masked_sum_count over the
    counted chunks, `reduction` "sequence" or "token"): the distribution-level divergence.

    At the start of chunk c both models predict the next token from the same text (chunks
    0 .. c-1 after the prompt): the student at its row first_s(c) of student_logits [B, N_s,
    V_s], the teacher at first_t(c) of teacher_logits [B, N_t, V_t] (logits or log-probs; the
    teacher's already divided by gkd.teacher_temperature, and no gradient reaches it). For
    c >= 1 these are the distributions after chunk c-1's last token. With p = softmax(z /
    temperature) on each side, both are collapsed onto K + 1 bins, the matched ids and a tail:

      s_k = p_S(student_ids[k]),  t_k = p_T(teacher_ids[k])                  k < K
      s_tail = sum_{v not in student_ids} p_S(v),  t_tail = sum_{v not in teacher_ids} p_T(v)

    and the loss is losses.jsd_from_log_probs(log s, log t, beta) (beta 0: KL(t || s), 1:
    KL(s || t)), as sparse_teacher.py does with the teacher's top-K. The bins compare the
    probability of "the next token has this text" on both sides, which is a surrogate: a
    student token that is a prefix of a teacher token (e.g. "a" vs "ab") is a different event,
    so unlike chunk_rkl this is not a divergence of text distributions. K = V_s = V_t with
    distinct ids: no tail bin, and with one tokenizer, the identity map and chunk c = token c,
    the per-chunk values equal losses.generalized_jsd's per-token values exactly.

    Student ids [K] and teacher ids [K] are distinct on each side (check_vocab_map) and the
    logits are cut to each tokenizer's real vocabulary first (embedding padding past the
    tokenizer would otherwise count as unmatched tail mass). A side whose every id is matched
    (K = V on that side only) has an empty tail: the forward KL is then infinite wherever the
    other side's tail has mass, as for any divergence with a zero bin."""
    values, mask = matched_jsd_per_chunk(
        student_logits,
        teacher_logits,
        student_chunks,
        teacher_chunks,
        student_ids,
        teacher_ids,
        beta=beta,
        num_chunks_max=num_chunks_max,
        temperature=temperature,
        num_chunks=num_chunks,
    )
    return losses.masked_sum_count(values, mask, reduction)


# ---------------------------------------------------------------- ULD and the hybrid


def _sorted_unmatched(logp: jax.Array, ids: jax.Array, length: int) -> jax.Array:
    """[..., length]: the probabilities of the ids outside `ids` [K], in decreasing order,
    zero-padded (or cut past the K zeros that stand in for the matched ids)."""
    matched = jnp.zeros(logp.shape[-1], bool).at[ids].set(True)  # [V]
    p = jnp.where(matched, 0.0, jnp.exp(logp))  # [..., V]
    # Every unmatched p >= 0 = the matched ids' stand-ins, so the first V - K entries of the
    # descending sort are exactly the unmatched probabilities, whatever order ties take.
    p = -jnp.sort(-p, axis=-1)  # [..., V]
    pad = length - p.shape[-1]
    if pad > 0:
        p = jnp.concatenate([p, jnp.zeros((*p.shape[:-1], pad), p.dtype)], axis=-1)
    return p[..., :length]


def uld_unmatched(
    logp_s: jax.Array, logp_t: jax.Array, student_ids: jax.Array, teacher_ids: jax.Array
) -> jax.Array:
    """Universal Logit Distillation on the unmatched vocabulary, per position [...]:

      ULD = sum_j | u_S[j] - u_T[j] |

    u_S: the U_S = V_s - K probabilities p_S(v), v not in student_ids, sorted in decreasing
    order; u_T likewise (U_T = V_t - K); the shorter is zero-padded to max(U_S, U_T). The
    probabilities are the full distributions' (not renormalized over the unmatched ids), so
    0 <= ULD <= s_tail + t_tail <= 2; 0 when both sides have no unmatched ids. logp_s [..., V_s]
    and logp_t [..., V_t] are normalized log-probabilities (chunk_start_log_probs)."""
    k = student_ids.shape[0]
    length = max(logp_s.shape[-1], logp_t.shape[-1]) - k  # max(U_S, U_T)
    if length <= 0:
        return jnp.zeros(logp_s.shape[:-1], jnp.float32)
    u_s = _sorted_unmatched(logp_s, student_ids.astype(jnp.int32), length)  # [..., L]
    u_t = _sorted_unmatched(logp_t, teacher_ids.astype(jnp.int32), length)  # [..., L]
    return jnp.sum(jnp.abs(u_s - u_t), axis=-1)


def gold_weights(num_matched: int, teacher_vocab: int) -> tuple[float, float]:
    """TRL GOLD's default (jsd_weight, uld_weight): K / V_t and 1 - K / V_t, the share of the
    teacher's vocabulary each part covers."""
    share = num_matched / max(1, teacher_vocab)
    return share, 1.0 - share


def hybrid_uld(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_chunks: jax.Array,
    teacher_chunks: jax.Array,
    student_ids: jax.Array,
    teacher_ids: jax.Array,
    *,
    beta: float,
    num_chunks_max: int,
    uld_weight: float = 1.0,
    jsd_weight: float = 1.0,
    reduction: str = "sequence",
    temperature: float | jax.Array = 1.0,
    num_chunks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(sum, count) of TRL GOLD's hybrid per counted chunk start (reduced as matched_jsd):

      hybrid = jsd_weight * JSD(beta)[K + 1 bins] + uld_weight * ULD[unmatched]

    JSD(beta) on the matched ids and the two tails exactly as matched_jsd (the tail bin already
    matches the unmatched mass as a whole); ULD (uld_unmatched) pulls the shape of the student's
    unmatched probabilities towards the teacher's, sorted since no id corresponds. Defaults
    1 and 1 add ULD to matched_jsd; gold_weights gives GOLD's K / V_t and 1 - K / V_t. With
    every id matched ULD is 0 and hybrid_uld = jsd_weight * matched_jsd. ULD sorts the
    unmatched probabilities of every chunk start: O(C V log V) per row, on C rows, not N."""
    jsd, mask, logp_s, logp_t = _matched_jsd(  # jsd, mask [B, C]
        student_logits, teacher_logits, student_chunks, teacher_chunks, student_ids,
        teacher_ids, beta, num_chunks_max, temperature, num_chunks,
    )  # fmt: skip
    uld = uld_unmatched(logp_s, logp_t, student_ids, teacher_ids)  # [B, C]
    return losses.masked_sum_count(jsd_weight * jsd + uld_weight * uld, mask, reduction)


# ---------------------------------------------------------------- host-side checks


def check_vocab_map(
    student_ids: np.ndarray, teacher_ids: np.ndarray, student_vocab: int, teacher_vocab: int
) -> None:
    """Raises ValueError unless the map is two equal-length 1-D int arrays of distinct ids in
    range on each side (the tail bins and ULD assume distinct ids). Host-side, once per run."""
    s, t = np.asarray(student_ids), np.asarray(teacher_ids)
    if s.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"the vocabulary map needs two [K] arrays, got {s.shape}, {t.shape}")
    if not (np.issubdtype(s.dtype, np.integer) and np.issubdtype(t.dtype, np.integer)):
        raise ValueError(f"the vocabulary map must hold integer ids, got {s.dtype}, {t.dtype}")
    for name, ids, vocab in (("student", s, student_vocab), ("teacher", t, teacher_vocab)):
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"{name} ids out of range [0, {vocab})")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"{name} ids repeat: each vocabulary string is matched once")


def check_chunks(
    student_chunks: np.ndarray, teacher_chunks: np.ndarray, num_chunks_max: int
) -> None:
    """Raises ValueError if a chunk id is below -1 or >= num_chunks_max (the jitted functions
    would drop those chunks silently), or if a side's chunk ids decrease along a row (chunks
    are consecutive spans in text order). Host-side, on the aligner's output."""
    for name, ch in (("student", student_chunks), ("teacher", teacher_chunks)):
        ch = np.asarray(ch)
        if ch.size and (ch.min() < -1 or ch.max() >= num_chunks_max):
            raise ValueError(
                f"{name} chunk ids must lie in [-1, {num_chunks_max}), got [{ch.min()}, {ch.max()}]"
            )
        for row in ch:
            kept = row[row >= 0]
            if np.any(np.diff(kept) < 0):
                raise ValueError(f"{name} chunk ids decrease along a row: {row.tolist()}")
