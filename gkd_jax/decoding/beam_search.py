"""Model-agnostic jitted beam search over the `Decoding(prefill, step)` pair (protocol.py).

The search is Hugging Face's (transformers >= 4.50 `_beam_search`, vectorized form), so that
`generate(num_beams=K, do_sample=False, length_penalty=alpha, early_stopping=...)` on the same
weights gives the same tokens. Each step, per example:

  1. the K alive beams' summed log-probabilities plus each next token's give K*V candidates;
     the best C = (1 + #stop ids) * K of them (at least 2K) are kept, so that K remain alive
     even when every alive beam's best continuation stops;
  2. the K best candidates that did not stop are the next alive beams (the model state, KV
     cache or encoder output, is gathered to follow them);
  3. candidates among the top K that stop (or reach max_new_tokens) join the K finished
     hypotheses, scored `sum log p / penalty(length)`, and the K best finished are kept;
  4. the example is settled once no alive beam can beat its worst finished one (`early_stopping`
     below); the loop ends when every example is settled or max_new_tokens is reached.

Length penalty, `length` counting the generated tokens with the stop token:
  "t5x": ((5 + length) / 6) ** alpha (T5X / Flax / GNMT's brevity penalty; the paper's T5 models
         were decoded with it, alpha = 0.6);
  "hf":  length ** alpha (transformers' `length_penalty`).
`early_stopping` follows transformers: "never" (exact: with alpha > 0 it bounds an alive beam by
its score at max length), False (transformers' default heuristic: at its current length), True
(stop as soon as K hypotheses finished).

The model state returned by `prefill` must be batch-major: every array leaf [B, ...] (scalars are
shared). Beams live as rows [B * K, ...], beam k of example b at row b * K + k.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gkd_jax.decoding.protocol import DecodeConfig, DecodeLength, Decoding

LENGTH_PENALTIES = ("t5x", "hf")
_NEG = -1.0e9  # transformers' "impossible" score; kept identical so ties break alike


@dataclasses.dataclass(frozen=True)
class _BeamKnobs(DecodeLength):
    beam_size: int = 4
    length_penalty: float = 0.6  # alpha; 0 = none (scores are plain summed log-probabilities)
    length_penalty_form: str = "t5x"  # "t5x": ((5 + len) / 6) ** alpha, "hf": len ** alpha
    early_stopping: bool | str = "never"


@dataclasses.dataclass(frozen=True)
class BeamSearchConfig(DecodeConfig, _BeamKnobs):
    """(max_new_tokens, beam_size, length_penalty, length_penalty_form, early_stopping, stop_ids,
    pad_id, vocab_size)."""

    def __post_init__(self):
        super().__post_init__()
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.length_penalty_form not in LENGTH_PENALTIES:
            raise ValueError(
                f"length_penalty_form must be one of {list(LENGTH_PENALTIES)}, "
                f"got {self.length_penalty_form!r}"
            )
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )

    def penalties(self) -> np.ndarray:
        """penalty(length) for length 1..max_new_tokens, [N] float32 (rounded from float64,
        as transformers' Python-float penalty is)."""
        length = np.arange(1, self.max_new_tokens + 1, dtype=np.float64)
        base = (5.0 + length) / 6.0 if self.length_penalty_form == "t5x" else length
        return (base**self.length_penalty).astype(np.float32)


@struct.dataclass
class BeamSearchOutput:
    """The best finished hypothesis per example, laid out like sampling.SampleOutput."""

    tokens: jax.Array  # [B, N] int32; pad_id after the stop token
    mask: jax.Array  # [B, N] bool; True up to and including the stop token
    prompt_lengths: jax.Array  # [B] int32, real (unpadded) prompt tokens
    num_steps: jax.Array  # [] int32, decode steps run (< N when every example settled early)
    scores: jax.Array  # [B] float32, sum of log-probabilities / penalty(length)


@struct.dataclass
class _BeamState:
    step: jax.Array  # [] int32, tokens per alive beam so far
    alive_tokens: jax.Array  # [B, K, N] int32
    alive_scores: jax.Array  # [B, K] float32, summed log-probabilities (descending)
    fin_tokens: jax.Array  # [B, K, N] int32
    fin_lengths: jax.Array  # [B, K] int32
    fin_scores: jax.Array  # [B, K] float32, penalized (descending)
    fin_real: jax.Array  # [B, K] bool, the slot holds a finished hypothesis
    open: jax.Array  # [B] bool, an alive beam may still beat the worst finished one
    all_stopped: jax.Array  # [] bool, every candidate of the last step stopped
    logits: jax.Array  # [B * K, V] float32, next-token logits of the alive beams
    state: Any  # the model family's decoding state, rows [B * K, ...]


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, M, ...] -> [B, J, ...] with rows idx [B, J] of each example."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


def _tile_state(state: Any, b: int, k: int) -> Any:
    """Every batch-major leaf [B, ...] -> [B * K, ...] (K copies of each row, adjacent)."""

    def tile(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return x
        if x.shape[0] != b:
            raise ValueError(
                f"beam search needs a batch-major decoding state (every array [B={b}, ...] or a "
                f"scalar); prefill returned a leaf of shape {x.shape}"
            )
        return jnp.repeat(x, k, axis=0)

    return jax.tree.map(tile, state)


def _passed_through(step: Callable, params: Any, tokens: jax.Array, state: Any) -> list[bool]:
    """Per state leaf: does `step` return it untouched? Such a leaf (T5's encoder output and
    mask, a decoder's prompt lengths) stays as prefill made it, the same for every beam of an
    example, so reordering it would copy it for nothing. Read off step's traced jaxpr: an output
    that is its own input variable; nothing is computed."""
    jaxpr = jax.make_jaxpr(step)(params, tokens, jnp.zeros((), jnp.int32), state).jaxpr
    n = len(jax.tree.leaves(state))
    # Flattened: inputs (params, tokens, index, state), outputs (logits, state).
    return [o is i for o, i in zip(jaxpr.outvars[-n:], jaxpr.invars[-n:], strict=True)]


def _reorder_state(state: Any, src: jax.Array, skip: list[bool]) -> Any:
    """Rows [B * K, ...] -> the rows of beams src [B, K] (each example's own beams only); leaves
    marked in `skip` are left as they are."""
    b, k = src.shape

    def gather(x, skip_leaf):
        if x.ndim == 0 or skip_leaf:
            return x
        return _gather_rows(x.reshape(b, k, *x.shape[1:]), src).reshape(x.shape)

    leaves, treedef = jax.tree.flatten(state)
    return jax.tree.unflatten(treedef, [gather(x, s) for x, s in zip(leaves, skip, strict=True)])


def _initial_state(b: int, k: int, n: int, pad_id: int, logits: jax.Array, state: Any):
    """Before the first step: no tokens, no finished hypotheses, every example open. Only beam 0
    starts alive, so the first step does not pick the same token K times."""
    alive_scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, _NEG), (b, 1))  # [B, K]
    return _BeamState(
        step=jnp.zeros((), jnp.int32),
        alive_tokens=jnp.full((b, k, n), pad_id, jnp.int32),
        alive_scores=alive_scores.astype(jnp.float32),
        fin_tokens=jnp.full((b, k, n), pad_id, jnp.int32),
        fin_lengths=jnp.zeros((b, k), jnp.int32),
        fin_scores=jnp.full((b, k), _NEG, jnp.float32),
        fin_real=jnp.zeros((b, k), bool),
        open=jnp.ones((b,), bool),
        all_stopped=jnp.zeros((), bool),
        logits=logits,
        state=state,
    )


def _merge_finished(
    s: _BeamState,
    penalized: jax.Array,
    cand_tokens: jax.Array,
    finishes: jax.Array,
    cfg: BeamSearchConfig,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Step 3: the candidates that finish (`finishes` [B, C]: stopped, among the top K; their
    penalized scores [B, C], tokens [B, C, N]) merged into the K best finished hypotheses of
    open examples. Returns the new (fin_scores, fin_tokens, fin_lengths, fin_real)."""
    (b, k), c = s.fin_scores.shape, penalized.shape[1]
    new = penalized + (~s.open[:, None]).astype(jnp.float32) * _NEG
    if cfg.early_stopping is True:
        full = jnp.all(s.fin_real, axis=1, keepdims=True)  # [B, 1]
        new = new + full.astype(jnp.float32) * _NEG
    new = new + (~finishes).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([s.fin_scores, new], axis=1)  # [B, K + C]
    fin_scores, keep = jax.lax.top_k(merged_scores, k)
    both = jnp.concatenate([s.fin_tokens, cand_tokens], axis=1)  # [B, K + C, N]
    fin_tokens = _gather_rows(both, keep)
    lengths = jnp.concatenate([s.fin_lengths, jnp.full((b, c), s.step + 1, jnp.int32)], axis=1)
    fin_lengths = jnp.take_along_axis(lengths, keep, axis=1)
    fin_real = jnp.take_along_axis(jnp.concatenate([s.fin_real, finishes], 1), keep, axis=1)
    return fin_scores, fin_tokens, fin_lengths, fin_real


def beam_search(
    decoding: Decoding,
    params: Any,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    cfg: BeamSearchConfig,
) -> BeamSearchOutput:
    """Beam search of up to `cfg.max_new_tokens` tokens after left-padded prompts [B, P]."""
    b, k, n = prompt.shape[0], cfg.beam_size, cfg.max_new_tokens
    stops = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)
    c = max(2, 1 + len(cfg.stop_ids)) * k  # candidates kept per step
    top_k_mask = jnp.arange(c) < k  # [C] only these may finish (transformers' rule)
    penalties = jnp.asarray(cfg.penalties())  # [N]
    alpha = cfg.length_penalty
    # The bound on an alive beam's final score: at max length when longer is better ("never"
    # with alpha > 0), else at its current length (transformers' heuristic).
    bound_at_max = cfg.early_stopping == "never" and alpha > 0.0

    prompt_len = prompt_mask.astype(bool).sum(axis=1).astype(jnp.int32)  # [B]
    logits, state = decoding.prefill(params, prompt, prompt_mask, n)
    logits = jnp.repeat(logits.astype(jnp.float32), k, axis=0)  # [B*K, V]
    state = _tile_state(state, b, k)
    constant = _passed_through(decoding.step, params, jnp.zeros((b * k,), jnp.int32), state)

    def cond(s: _BeamState):
        return (s.step < n) & jnp.any(s.open) & ~s.all_stopped

    def body(s: _BeamState):
        t = s.step
        logits = s.logits[:, : cfg.vocab_size] if cfg.vocab_size else s.logits
        v = logits.shape[-1]
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, v)
        total = (logp + s.alive_scores[:, :, None]).reshape(b, k * v)  # [B, K*V]
        cand_scores, flat = jax.lax.top_k(total, c)  # [B, C], descending
        cand_beam, cand_tok = flat // v, (flat % v).astype(jnp.int32)  # [B, C]
        cand_tokens = _gather_rows(s.alive_tokens, cand_beam).at[:, :, t].set(cand_tok)
        stopped = jnp.isin(cand_tok, stops) | (t + 1 == n)  # [B, C]

        # The K best candidates that go on (stopped ones pushed below every live one).
        live_scores = cand_scores + stopped.astype(jnp.float32) * _NEG
        alive_scores, pick = jax.lax.top_k(live_scores, k)  # [B, K]
        alive_tokens = _gather_rows(cand_tokens, pick)  # [B, K, N]
        src = jnp.take_along_axis(cand_beam, pick, axis=1)  # [B, K] parent beams

        finishes = stopped & top_k_mask[None]
        fin = _merge_finished(s, cand_scores / penalties[t], cand_tokens, finishes, cfg)
        fin_scores, fin_tokens, fin_lengths, fin_real = fin

        # Can the best alive beam still beat the worst finished one?
        bound = penalties[n - 1] if bound_at_max else penalties[t]
        best_alive = alive_scores[:, :1] / bound  # [B, 1]
        worst = jnp.where(fin_real, jnp.min(fin_scores, axis=1, keepdims=True), _NEG)  # [B, K]
        still_open = s.open & jnp.any(best_alive > worst, axis=1)

        state = _reorder_state(s.state, src, constant)
        tok = alive_tokens[:, :, t].reshape(b * k)  # [B*K]
        logits, state = decoding.step(params, tok, t, state)
        return _BeamState(
            step=t + 1,
            alive_tokens=alive_tokens,
            alive_scores=alive_scores,
            fin_tokens=fin_tokens,
            fin_lengths=fin_lengths,
            fin_scores=fin_scores,
            fin_real=fin_real,
            open=still_open,
            all_stopped=jnp.all(stopped),
            logits=logits.astype(jnp.float32),
            state=state,
        )

    final = jax.lax.while_loop(cond, body, _initial_state(b, k, n, cfg.pad_id, logits, state))
    # Finished slots are sorted: slot 0 is the best hypothesis.
    mask = jnp.arange(n)[None, :] < final.fin_lengths[:, :1]  # [B, N]
    tokens = jnp.where(mask, final.fin_tokens[:, 0], cfg.pad_id)
    return BeamSearchOutput(tokens, mask, prompt_len, final.step, final.fin_scores[:, 0])


def make_beam_search(
    decoding: Decoding, cfg: BeamSearchConfig, *, compiler_options=None
) -> Callable:
    """Jitted `search(params, prompt, prompt_mask, rng) -> BeamSearchOutput`, one compile per
    shape; `rng` is unused (the search is deterministic) so it stands in for a sampler.
    `compiler_options`: jax.jit's (sampler_memory on TPU)."""

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def search(params, prompt, prompt_mask, rng):
        del rng
        return beam_search(decoding, params, prompt, prompt_mask, cfg)

    return search
