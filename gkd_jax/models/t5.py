"""T5 encoder-decoder in Flax NNX: original T5 (ReLU, tied head) and T5 v1.1 / Flan-T5 / mT5
(gated GELU, untied head), with logits equal to Hugging Face's `T5ForConditionalGeneration`.

Module and parameter names follow Hugging Face's layout (`shared`, `encoder.block[i].layer[0]
.SelfAttention.q`, `decoder.block[i].layer[1].EncDecAttention`, `layer[-1].DenseReluDense.wi_0`,
`final_layer_norm`, `lm_head`) so that a checkpoint maps onto this model by renaming and
transposing kernels, nothing else.

Positions enter only through relative position buckets, whose bias table lives in block 0 of each
stack and is shared by all its layers. Decoding state is explicit: a decoder self-attention cache
(one `{"k", "v"}` dict per layer, `[B, N, L, H]`) and the cross-attention K/V of the encoder
output, computed once per prompt.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gkd_jax.decoding.protocol import Decoding
from gkd_jax.models.decoder import RMSNorm, dense
from gkd_jax.models.lm import LMFunctions
from gkd_jax.models.remat import remat_call
from gkd_jax.parallel.sharding import constrain_rows

Cache = list[dict[str, jax.Array]]

ACTIVATIONS = {
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),  # HF "gelu_new" (T5 v1.1, Flan-T5)
    "relu": jax.nn.relu,  # original T5
    "silu": jax.nn.silu,  # UL2
}


def masked_bias(mask: jax.Array) -> jax.Array:
    """Validity -> additive float32 score bias. Finite, so that fully masked rows (pad queries, an
    empty prompt) stay NaN-free; they are never read."""
    return jnp.where(mask.astype(bool), 0.0, -1e30).astype(jnp.float32)


class Dropout:
    """Training-time inverted dropout at Hugging Face T5's sites (after the embeddings, on the
    attention probabilities, between the FFN's two projections, on each sublayer's output and
    after each stack's final norm). Call k draws its mask from fold_in(key, k): the calls come
    in a fixed order at trace time, so the masks are a function of `key` alone."""

    def __init__(self, rate: float, key: jax.Array):
        self.rate, self.key, self.calls = rate, key, 0

    def __call__(self, x: jax.Array) -> jax.Array:
        self.calls += 1
        return self.apply(x, jax.random.fold_in(self.key, self.calls))

    def apply(self, x: jax.Array, key: jax.Array) -> jax.Array:
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


def drop(dropout: Dropout | None, x: jax.Array) -> jax.Array:
    """x itself without dropout (evaluation, sampling, the teacher): the graph is unchanged."""
    return x if dropout is None else dropout(x)


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int  # per-head dim; num_heads * d_kv need not equal d_model
    d_ff: int
    num_layers: int  # encoder blocks
    num_heads: int
    num_decoder_layers: int | None = None  # None: num_layers
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    gated: bool = False  # act(wi_0 x) * wi_1 x, as T5 v1.1; else act(wi x)
    activation: str = "relu"  # a key of ACTIVATIONS
    # Tied head also means the decoder output is scaled by d_model**-0.5 before it: the two go
    # together in every T5 release (original T5: both; v1.1 / Flan-T5 / mT5: neither).
    tie_embeddings: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int | tuple[int, ...] | None = 1

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        # Below this the log-spaced buckets divide by log(max_distance / max_exact) <= 0.
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                f"relative_attention_max_distance={self.relative_attention_max_distance} must "
                f"exceed relative_attention_num_buckets // 2 "
                f"({self.relative_attention_num_buckets // 2})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def relative_position_buckets(
    relative: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Bucket of each relative position (key - query), int [...] -> int32 [...], as HF T5.

    The buckets come from a table built with numpy float32, the same operations in the same order
    as transformers: a log computed by XLA could round differently at a bucket edge. Every
    |relative| >= max(max_distance, num_buckets) falls in the outermost bucket, so the table
    stops there.
    """
    m = max(max_distance, num_buckets)
    rel = np.arange(-m, m + 1)
    buckets = np.zeros_like(rel)
    nb = num_buckets
    if bidirectional:
        nb //= 2
        buckets += (rel > 0) * nb
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)  # attending to the future is masked; it shares bucket 0
    max_exact = nb // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):  # log(0) in rows that is_small picks anyway
        large = np.log(rel.astype(np.float32) / np.float32(max_exact))
        large = large / np.float32(math.log(max_distance / max_exact)) * np.float32(nb - max_exact)
    large = np.minimum(max_exact + np.where(is_small, 0, large).astype(np.int64), nb - 1)
    table = jnp.asarray(buckets + np.where(is_small, rel, large), jnp.int32)  # [2m + 1]
    return table[jnp.clip(relative, -m, m) + m]


def t5_layer_norm(cfg: T5Config, param_dtype) -> RMSNorm:
    """HF's T5LayerNorm is RMSNorm: no mean, no bias, statistics in float32."""
    return RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)


class T5Attention(nnx.Module):
    def __init__(self, cfg: T5Config, *, relative_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        inner = cfg.num_heads * cfg.d_kv
        self.q = nnx.Linear(cfg.d_model, inner, use_bias=False, **kw)
        self.k = nnx.Linear(cfg.d_model, inner, use_bias=False, **kw)
        self.v = nnx.Linear(cfg.d_model, inner, use_bias=False, **kw)
        self.o = nnx.Linear(inner, cfg.d_model, use_bias=False, **kw)
        if relative_bias:
            self.relative_attention_bias = nnx.Embed(
                cfg.relative_attention_num_buckets, cfg.num_heads, **kw
            )
        self.cfg = cfg

    def heads(self, layer: nnx.Linear, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, N, T, H]."""
        b, t, _ = x.shape
        n, h = self.cfg.num_heads, self.cfg.d_kv
        return dense(layer, x).reshape(b, t, n, h).transpose(0, 2, 1, 3)

    def key_values(self, x: jax.Array) -> dict[str, jax.Array]:
        return {"k": self.heads(self.k, x), "v": self.heads(self.v, x)}  # [B, N, S, H] each

    def position_bias(self, q_pos: jax.Array, k_pos: jax.Array, bidirectional: bool) -> jax.Array:
        """q_pos [T], k_pos [S] -> float32 [1, N, T, S]."""
        cfg = self.cfg
        buckets = relative_position_buckets(
            k_pos[None, :] - q_pos[:, None],
            bidirectional,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )  # [T, S]
        table = self.relative_attention_bias.embedding[...].astype(jnp.float32)  # [buckets, N]
        return jnp.take(table, buckets, axis=0).transpose(2, 0, 1)[None]

    def __call__(
        self, x: jax.Array, kv: dict[str, jax.Array], bias: jax.Array, dropout=None
    ) -> jax.Array:
        """x [B, T, D] queries; kv [B, N, S, H]; bias [B|1, N|1, T|1, S] float32 (position bias plus
        mask). No 1/sqrt(H) scaling: T5 folds it into the initialization of q."""
        b, t, _ = x.shape
        q = self.heads(self.q, x)  # [B, N, T, H]
        scores = jnp.einsum("bnth,bnsh->bnts", q, kv["k"].astype(q.dtype)).astype(jnp.float32)
        probs = drop(dropout, jax.nn.softmax(scores + bias, axis=-1)).astype(kv["v"].dtype)
        out = jnp.einsum("bnts,bnsh->bnth", probs, kv["v"])  # [B, N, T, H]
        return dense(self.o, out.transpose(0, 2, 1, 3).reshape(b, t, -1))


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, relative_bias: bool, **kw):
        self.SelfAttention = T5Attention(cfg, relative_bias=relative_bias, **kw)
        self.layer_norm = t5_layer_norm(cfg, kw["param_dtype"])

    def __call__(self, x, bias, cache=None, cache_index=None, dropout=None):
        h = self.layer_norm(x)
        kv = self.SelfAttention.key_values(h)
        if cache is not None:
            # Decoder inputs are never padded on the left, so every row writes the same slot.
            kv = {
                n: jax.lax.dynamic_update_slice(
                    cache[n], kv[n].astype(cache[n].dtype), (0, 0, cache_index, 0)
                )
                for n in ("k", "v")
            }  # [B, N, L, H]
        out = drop(dropout, self.SelfAttention(h, kv, bias, dropout))
        return x + out, (kv if cache is not None else None)


class T5LayerCrossAttention(nnx.Module):
    def __init__(self, cfg: T5Config, **kw):
        self.EncDecAttention = T5Attention(cfg, relative_bias=False, **kw)
        self.layer_norm = t5_layer_norm(cfg, kw["param_dtype"])

    def __call__(self, x, kv, bias, dropout=None):
        return x + drop(dropout, self.EncDecAttention(self.layer_norm(x), kv, bias, dropout))


class T5DenseActDense(nnx.Module):
    """HF's T5DenseActDense and T5DenseGatedActDense (the latter when cfg.gated)."""

    def __init__(self, cfg: T5Config, *, dtype, param_dtype, rngs):
        lin = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.gated:
            self.wi_0 = nnx.Linear(cfg.d_model, cfg.d_ff, **lin)
            self.wi_1 = nnx.Linear(cfg.d_model, cfg.d_ff, **lin)
        else:
            self.wi = nnx.Linear(cfg.d_model, cfg.d_ff, **lin)
        self.wo = nnx.Linear(cfg.d_ff, cfg.d_model, **lin)
        self.act = ACTIVATIONS[cfg.activation]
        self.gated = cfg.gated

    def __call__(self, x, dropout=None):
        if self.gated:
            h = self.act(dense(self.wi_0, x)) * dense(self.wi_1, x)
        else:
            h = self.act(dense(self.wi, x))
        return dense(self.wo, drop(dropout, h))


class T5LayerFF(nnx.Module):
    def __init__(self, cfg: T5Config, **kw):
        self.DenseReluDense = T5DenseActDense(cfg, **kw)
        self.layer_norm = t5_layer_norm(cfg, kw["param_dtype"])

    def __call__(self, x, dropout=None):
        return x + drop(dropout, self.DenseReluDense(self.layer_norm(x), dropout))


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, *, relative_bias: bool, is_decoder: bool, **kw):
        layers = [T5LayerSelfAttention(cfg, relative_bias=relative_bias, **kw)]
        if is_decoder:
            layers.append(T5LayerCrossAttention(cfg, **kw))
        self.layer = nnx.List([*layers, T5LayerFF(cfg, **kw)])

    def __call__(
        self, x, bias, cache=None, cache_index=None, cross_kv=None, cross_bias=None, dropout=None
    ):
        x, cache = self.layer[0](x, bias, cache, cache_index, dropout)
        if cross_kv is not None:
            x = self.layer[1](x, cross_kv, cross_bias, dropout)
        return self.layer[-1](x, dropout), cache


class T5Stack(nnx.Module):
    def __init__(self, cfg: T5Config, num_layers: int, *, is_decoder: bool, **kw):
        self.block = nnx.List(
            [
                T5Block(cfg, relative_bias=i == 0, is_decoder=is_decoder, **kw)
                for i in range(num_layers)
            ]
        )
        self.final_layer_norm = t5_layer_norm(cfg, kw["param_dtype"])
        self.is_decoder = is_decoder

    def position_bias(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
        """[1, N, T, S]: block 0's relative bias, reused by every block of the stack."""
        attn = self.block[0].layer[0].SelfAttention
        return attn.position_bias(q_pos, k_pos, bidirectional=not self.is_decoder)


class T5(nnx.Module):
    """`model(input_ids [B, S], attention_mask, decoder_input_ids [B, T], decoder_attention_mask)`
    -> logits [B, T, V] float32, as Hugging Face's forward; `encode`, `cross_kv` and `decode`
    (with an explicit cache) are the pieces the scorer and sampler use."""

    def __init__(
        self,
        cfg: T5Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = "none"  # models/remat.py: set by set_remat (config.remat)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, **kw)
        self.encoder = T5Stack(cfg, cfg.num_layers, is_decoder=False, **kw)
        self.decoder = T5Stack(cfg, cfg.num_decoder_layers, is_decoder=True, **kw)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, **kw)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """decoder_input_ids=None decodes the start token alone: logits [B, 1, V]."""
        b = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if decoder_input_ids is None:
            decoder_input_ids = jnp.full((b, 1), self.cfg.decoder_start_token_id, jnp.int32)
        cross = self.cross_kv(self.encode(input_ids, attention_mask))
        logits, _ = self.decode(decoder_input_ids, cross, attention_mask, decoder_attention_mask)
        return logits

    def encode(
        self, input_ids: jax.Array, attention_mask: jax.Array, dropout: Dropout | None = None
    ) -> jax.Array:
        """[B, S] tokens and validity -> [B, S, D]. Only the distance between tokens enters, so
        left padding changes nothing for the real tokens."""
        x = drop(dropout, self.shared(input_ids))  # [B, S, D]
        pos = jnp.arange(input_ids.shape[1])
        key_mask = masked_bias(attention_mask)[:, None, None, :]  # [B, 1, 1, S]
        bias = self.encoder.position_bias(pos, pos) + key_mask  # [B, N, S, S]
        # Rematerialized blocks (config.remat); the Dropout's masks are drawn in trace order,
        # once, so recomputation repeats them.
        run = remat_call(
            getattr(self, "remat", "none"), lambda blk, h, b: blk(h, b, dropout=dropout)[0]
        )
        for block in self.encoder.block:
            x = run(block, x, bias)
            x = constrain_rows(x)  # rows stay split over the mesh's batch axes (sharding.py)
        return drop(dropout, self.encoder.final_layer_norm(x))

    def cross_kv(self, encoded: jax.Array) -> Cache:
        """Each decoder layer's cross-attention K/V of the encoder output [B, S, D]: computed once
        per prompt, not once per decoded token."""
        return [block.layer[1].EncDecAttention.key_values(encoded) for block in self.decoder.block]

    def init_cache(self, batch: int, length: int, dtype=None) -> Cache:
        shape = (batch, self.cfg.num_heads, length, self.cfg.d_kv)  # [B, N, L, H]
        dtype = dtype or self.dtype
        return [
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(self.cfg.num_decoder_layers)
        ]

    def decode(
        self,
        tokens: jax.Array,
        cross_kv: Cache,
        encoder_mask: jax.Array,
        decoder_mask: jax.Array | None = None,
        cache: Cache | None = None,
        cache_index: jax.Array | int = 0,
        dropout: Dropout | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Decoder tokens [B, T] at slots cache_index.. -> (logits [B, T, V] float32, cache).

        encoder_mask [B, S_enc]: valid encoder positions. decoder_mask [B, S]: valid decoder keys
        (None: all; causality is applied here). With a cache, S is the cache length.
        """
        x, new_cache = self.decode_hidden(
            tokens, cross_kv, encoder_mask, decoder_mask, cache, cache_index, dropout
        )
        if self.cfg.tie_embeddings:
            logits = dense(self.shared.attend, x * self.cfg.d_model**-0.5)
        else:
            logits = dense(self.lm_head, x)
        return constrain_rows(logits.astype(jnp.float32), vocab=True), new_cache  # [B, T, V]

    def decode_hidden(
        self,
        tokens: jax.Array,
        cross_kv: Cache,
        encoder_mask: jax.Array,
        decoder_mask: jax.Array | None = None,
        cache: Cache | None = None,
        cache_index: jax.Array | int = 0,
        dropout: Dropout | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """`decode` up to the output head: final-normed hidden states [B, T, D] and the cache."""
        t = tokens.shape[1]
        s = t if cache is None else cache[0]["k"].shape[2]
        q_pos = cache_index + jnp.arange(t)  # [T]
        k_pos = jnp.arange(s)  # [S]
        mask = (k_pos[None, :] <= q_pos[:, None])[None]  # [1, T, S]
        if decoder_mask is not None:
            mask = mask & decoder_mask.astype(bool)[:, None, :]  # [B, T, S]
        # [B|1, N, T, S]
        self_bias = self.decoder.position_bias(q_pos, k_pos) + masked_bias(mask)[:, None]
        cross_bias = masked_bias(encoder_mask)[:, None, None, :]  # [B, 1, 1, S_enc]

        x = drop(dropout, self.shared(tokens))  # [B, T, D]
        new_cache = [] if cache is not None else None
        remat = "none" if cache is not None else getattr(self, "remat", "none")
        run = remat_call(
            remat,
            lambda blk, h, sb, ckv, cb: blk(h, sb, None, cache_index, ckv, cb, dropout)[0],
        )
        for i, block in enumerate(self.decoder.block):
            if cache is None:
                x, c = run(block, x, self_bias, cross_kv[i], cross_bias), None
            else:
                x, c = block(x, self_bias, cache[i], cache_index, cross_kv[i], cross_bias, dropout)
            x = constrain_rows(x)
            if cache is not None:
                new_cache.append(c)
        return drop(dropout, self.decoder.final_layer_norm(x)), new_cache

    def unembedding(self) -> jax.Array:
        """The output head as [D, V] in the compute dtype: logits = decode_hidden @ this. The tied
        head's d_model**-0.5 scaling is folded in."""
        if self.cfg.tie_embeddings:
            w = self.shared.embedding[...].T * self.cfg.d_model**-0.5
        else:
            w = self.lm_head.kernel[...]
        return w.astype(self.dtype)


def t5_functions(model: T5) -> tuple[Any, LMFunctions]:
    """(params, LMFunctions) of a T5: the prompt is the encoder input, the completion is decoded
    after `decoder_start_token_id`."""
    graphdef, params = nnx.split(model)
    start_id = model.cfg.decoder_start_token_id

    def score(
        params, prompt, prompt_mask, completion, completion_mask, *, dropout_rate=0.0,
        dropout_key=None,
    ):  # fmt: skip
        """dropout_rate > 0 with a key: training-mode logits (Dropout's sites, masks from key)."""
        m = nnx.merge(graphdef, params)
        b = prompt.shape[0]
        dropout = Dropout(dropout_rate, dropout_key) if dropout_rate > 0 else None
        cross = m.cross_kv(m.encode(prompt, prompt_mask, dropout))
        start = jnp.full((b, 1), start_id, completion.dtype)
        inputs = jnp.concatenate([start, completion[:, :-1]], axis=1)  # [B, N]
        # No decoder mask: completions are right-padded, so causality alone keeps pads out of
        # every real token's row.
        logits, _ = m.decode(inputs, cross, prompt_mask, dropout=dropout)
        return logits  # [B, N, V]

    def prefill(params, prompt, prompt_mask, max_new_tokens):
        m = nnx.merge(graphdef, params)
        b = prompt.shape[0]
        prompt_mask = prompt_mask.astype(bool)
        cross = m.cross_kv(m.encode(prompt, prompt_mask))
        cache = m.init_cache(b, max_new_tokens + 1)  # slot 0: the start token
        start = jnp.full((b, 1), start_id, jnp.int32)
        logits, cache = m.decode(start, cross, prompt_mask, cache=cache, cache_index=0)
        return logits[:, -1], (cache, cross, prompt_mask)

    def step(params, tokens, index, state):
        cache, cross, prompt_mask = state
        m = nnx.merge(graphdef, params)
        logits, cache = m.decode(
            tokens[:, None], cross, prompt_mask, cache=cache, cache_index=index + 1
        )
        return logits[:, -1], (cache, cross, prompt_mask)

    def hidden(
        params, prompt, prompt_mask, completion, completion_mask, *, dropout_rate=0.0,
        dropout_key=None,
    ):  # fmt: skip
        m = nnx.merge(graphdef, params)
        dropout = Dropout(dropout_rate, dropout_key) if dropout_rate > 0 else None
        cross = m.cross_kv(m.encode(prompt, prompt_mask, dropout))
        start = jnp.full((prompt.shape[0], 1), start_id, completion.dtype)
        inputs = jnp.concatenate([start, completion[:, :-1]], axis=1)  # [B, N]
        return m.decode_hidden(inputs, cross, prompt_mask, dropout=dropout)[0]  # [B, N, D]

    return params, LMFunctions(
        score,
        Decoding(prefill, step),
        model.cfg.vocab_size,
        hidden=hidden,
        unembedding=lambda p: nnx.merge(graphdef, p).unembedding(),
    )
