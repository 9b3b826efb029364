"""A decoder-only transformer in Flax NNX: RMSNorm, RoPE, grouped-query attention, gated MLP.

Module and parameter names follow Hugging Face's Llama/Qwen/Gemma layout (`embed_tokens`,
`layers[i].self_attn.q_proj`, `mlp.gate_proj`, `norm`, `lm_head`) so that a checkpoint maps onto
this model by renaming and transposing kernels, nothing else (gkd_jax/models/hf_decoder.py).
The defaults are a Llama; the config's family switches (q/k norms, Gemma's norms, soft-capping,
sliding windows, scaled RoPE, Gemma 3's own RoPE base for sliding layers) cost nothing when
off: they are Python branches at trace time.

The KV cache is explicit: a list with one `{"k", "v"}` dict per layer, `[B, S, K, H]` each, passed
in and returned; sliding-window layers also keep `"pos"` [B, S], the position of each slot's key.
Callers own the attention mask, so left-padded prompts and per-row positions need nothing special
here. `decoder_functions` is the family's functional view (models/lm.py's LMFunctions): score,
hidden states, and the `Decoding` pair the decoders run (`causal_lm_decoding`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gkd_jax.decoding.protocol import Decoding
from gkd_jax.models.lm import LMFunctions
from gkd_jax.models.remat import remat_call
from gkd_jax.parallel.sharding import constrain_rows

Cache = list[dict[str, jax.Array]]

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has q/k/v biases
    # The fields below default to today's Llama-style model (checkpoints without them load as
    # before); hf_decoder.config_from_hf sets them per family.
    model_type: str = "llama"  # the Hugging Face model_type this model exports as
    o_bias: bool = False  # o_proj bias (Llama/Qwen3/Gemma 2 `attention_bias` biases q, k, v, o)
    mlp_bias: bool = False  # Llama's mlp_bias: gate/up/down biases
    activation: str = "silu"  # of the gated MLP: "silu", "gelu_tanh" (Gemma) or "gelu"
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim of each q and k head, before RoPE
    norm_offset: float = 0.0  # Gemma: every RMSNorm scales by (norm_offset + weight)
    post_norms: bool = False  # Gemma 2: also norm the attention and MLP outputs (4 norms/layer)
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # scores times this**-0.5; None: head_dim**-0.5
    attn_softcap: float | None = None  # Gemma 2: scores -> tanh(scores / cap) * cap
    final_softcap: float | None = None  # Gemma 2: the same on the output logits
    sliding_window: int | None = None  # a query attends to keys < window positions back
    sliding_layers: tuple[bool, ...] | None = None  # layers that slide; None: all (Mistral)
    rope_type: str = "default"  # "default", "linear" or "llama3" (HF rope_parameters)
    rope_factor: float = 1.0  # linear, llama3: long wavelengths are stretched by this
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_positions: int = 8192  # llama3: the pretraining context
    # Gemma 3: the sliding layers' own RoPE base (plain RoPE, never scaled); the rope_* fields
    # above then apply to the full-attention layers only. None: every layer uses the above.
    rope_local_theta: float | None = None
    max_position_embeddings: int | None = None  # not used by the model; exported to config.json

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {list(ACTIVATIONS)}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r}: expected one of {ROPE_TYPES}")
        if self.sliding_layers is not None:
            # JSON (checkpoint metadata) gives a list; a tuple keeps the config hashable.
            object.__setattr__(self, "sliding_layers", tuple(bool(s) for s in self.sliding_layers))
            if len(self.sliding_layers) != self.num_layers:
                raise ValueError(
                    f"sliding_layers has {len(self.sliding_layers)} entries for num_layers="
                    f"{self.num_layers}"
                )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.rope_local_theta is not None and self.rope_local_theta <= 0:
            raise ValueError(f"rope_local_theta must be > 0 or None, got {self.rope_local_theta}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def slides(self, layer: int) -> bool:
        """Whether `layer` uses sliding-window attention."""
        if self.sliding_window is None:
            return False
        return self.sliding_layers is None or self.sliding_layers[layer]

    def rope_for(self, layer: int) -> tuple[float, np.ndarray | None]:
        """(RoPE base, scaled inverse frequencies or None) of `layer`: Gemma 3's sliding layers
        rotate by their own plain base, every other layer by rope_theta and the scaling."""
        if self.rope_local_theta is not None and self.slides(layer):
            return self.rope_local_theta, None
        return self.rope_theta, rope_frequencies(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dense(layer, x: jax.Array) -> jax.Array:
    """Apply a projection to tokens flattened to [B*T, D]: XLA:CPU computes the weight gradient of
    a matmul that contracts over two batch dims ([B, T]) 2-3x slower than over one."""
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def softcap(x: jax.Array, cap: float) -> jax.Array:
    return jnp.tanh(x / cap) * cap


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, offset: float = 0.0, param_dtype=jnp.float32):
        # The stored weight is the checkpoint's; Gemma's applies as (offset + weight), so a zero
        # weight is the identity there.
        self.weight = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: jax.Array) -> jax.Array:
        # Statistics in float32 whatever the activation dtype, as HF Llama does.
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...].astype(jnp.float32)
        if self.offset:
            w = w + self.offset
        return (y * w).astype(x.dtype)


def make_norm(cfg: DecoderConfig, dim: int, param_dtype) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, offset=cfg.norm_offset, param_dtype=param_dtype)


def rope_frequencies(cfg: DecoderConfig) -> np.ndarray | None:
    """Scaled RoPE inverse frequencies [H/2] as HF computes them; None for plain RoPE."""
    if cfg.rope_type == "default":
        return None
    half = cfg.dim_per_head // 2
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(half, dtype=np.float64) / half)
    if cfg.rope_type == "linear":
        return (inv_freq / cfg.rope_factor).astype(np.float32)
    # llama3: wavelengths past the pretraining context's low-frequency bound are stretched by
    # `factor`, those under the high-frequency bound kept, the band between interpolated.
    ctx, lo, hi = (
        cfg.rope_original_max_positions,
        cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor,
    )
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > ctx / lo, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (ctx / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= ctx / hi) & (wavelen <= ctx / lo)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope(
    x: jax.Array, positions: jax.Array, theta: float, inv_freq: np.ndarray | None = None
) -> jax.Array:
    """Rotary embedding, HF "rotate_half" convention. x: [B, T, N, H], positions: [B, T].
    `inv_freq` [H/2] overrides the plain frequencies from `theta` (scaled RoPE)."""
    half = x.shape[-1] // 2
    if inv_freq is None:
        inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, H/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, d = cfg.dim_per_head, cfg.hidden_size
        lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d, cfg.num_heads * h, use_bias=cfg.qkv_bias, **lin)
        self.k_proj = nnx.Linear(d, cfg.num_kv_heads * h, use_bias=cfg.qkv_bias, **lin)
        self.v_proj = nnx.Linear(d, cfg.num_kv_heads * h, use_bias=cfg.qkv_bias, **lin)
        self.o_proj = nnx.Linear(cfg.num_heads * h, d, use_bias=cfg.o_bias, **lin)
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg, h, param_dtype)
            self.k_norm = make_norm(cfg, h, param_dtype)
        self.cfg = cfg
        self.sliding = cfg.slides(layer)
        self.layer = layer

    def __call__(self, x, positions, mask, cache=None, cache_index=None):
        """x: [B, T, D]; positions: [B, T]; mask: [B, T, S] bool (True = may attend)."""
        cfg = self.cfg
        b, t, _ = x.shape
        n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        q = dense(self.q_proj, x).reshape(b, t, n, h)
        key = dense(self.k_proj, x).reshape(b, t, k, h)
        if cfg.qk_norm:
            q, key = self.q_norm(q), self.k_norm(key)
        theta, inv_freq = cfg.rope_for(self.layer)
        q = rope(q, positions, theta, inv_freq)
        key = rope(key, positions, theta, inv_freq)
        val = dense(self.v_proj, x).reshape(b, t, k, h)
        key_pos = positions  # [B, S] without a cache: the keys are the queries
        if cache is not None:
            # Every row writes at the same slot: prompts are left-padded, so slots align.
            key = jax.lax.dynamic_update_slice(
                cache["k"], key.astype(cache["k"].dtype), (0, cache_index, 0, 0)
            )  # [B, S, K, H]
            val = jax.lax.dynamic_update_slice(
                cache["v"], val.astype(cache["v"].dtype), (0, cache_index, 0, 0)
            )
            new_cache = {"k": key, "v": val}
            if self.sliding:
                key_pos = jax.lax.dynamic_update_slice(
                    cache["pos"], positions.astype(cache["pos"].dtype), (0, cache_index)
                )  # [B, S]
                new_cache["pos"] = key_pos
            cache = new_cache
        if self.sliding:
            # By positions, not cache slots: left padding shifts a row's slots, not its positions.
            near = positions[:, :, None] - key_pos[:, None, :] < cfg.sliding_window  # [B, T, S]
            mask = mask & near
        # Heads ahead of time and the G query heads of a KV head folded into the query axis:
        # plain batched matmuls, whose backward XLA:CPU runs ~2x faster than a 5-D einsum's.
        g, s = n // k, key.shape[1]
        q = q.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
        key, val = key.astype(q.dtype).transpose(0, 2, 1, 3), val.transpose(0, 2, 1, 3)
        scores = jnp.einsum("bkqh,bksh->bkqs", q, key).astype(jnp.float32)  # [B, K, G*T, S]
        if cfg.query_pre_attn_scalar is None:
            scores = scores.reshape(b, k, g, t, s) / jnp.sqrt(jnp.float32(h))
        else:
            scores = scores.reshape(b, k, g, t, s) * jnp.float32(cfg.query_pre_attn_scalar**-0.5)
        if cfg.attn_softcap is not None:
            # Before the mask, as HF: capping the -1e30 bias would let masked keys through.
            scores = softcap(scores, cfg.attn_softcap)
        # A finite bias keeps fully masked rows (pad queries) NaN-free; they are never read.
        scores = scores + jnp.where(mask, 0.0, -1e30)[:, None, None]  # mask: [B, T, S]
        probs = jax.nn.softmax(scores, axis=-1).astype(val.dtype).reshape(b, k, g * t, s)
        out = jnp.einsum("bkqs,bksh->bkqh", probs, val)  # [B, K, G*T, H]
        out = out.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4)  # [B, T, K, G, H]
        return dense(self.o_proj, out.reshape(b, t, n * h)), cache


class MLP(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        lin = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **lin)
        self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **lin)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **lin)
        self.activation = cfg.activation

    def __call__(self, x):
        h = ACTIVATIONS[self.activation](dense(self.gate_proj, x)) * dense(self.up_proj, x)
        return dense(self.down_proj, h)


class Block(nnx.Module):
    """Pre-norm residual block. With `post_norms` (Gemma 2) the attention and MLP outputs are
    normed too, and HF's names shift: `post_attention_layernorm` norms the attention output and
    `pre_feedforward_layernorm` the MLP input (which Llama calls `post_attention_layernorm`)."""

    def __init__(self, cfg: DecoderConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.input_layernorm = make_norm(cfg, d, param_dtype)
        self.self_attn = Attention(cfg, layer, **kw)
        self.post_attention_layernorm = make_norm(cfg, d, param_dtype)
        if cfg.post_norms:
            self.pre_feedforward_layernorm = make_norm(cfg, d, param_dtype)
            self.post_feedforward_layernorm = make_norm(cfg, d, param_dtype)
        self.mlp = MLP(cfg, **kw)
        self.post_norms = cfg.post_norms

    def __call__(self, x, positions, mask, cache=None, cache_index=None):
        y, cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, cache_index)
        if self.post_norms:
            x = x + self.post_attention_layernorm(y)
            y = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
            return x + y, cache
        x = x + y
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Decoder(nnx.Module):
    """Causal LM. `model(input_ids [B, T], attention_mask=None)` -> logits [B, T, V] float32 (as
    Hugging Face's, pads anywhere); `forward(tokens, positions, mask, cache, cache_index)` is the
    explicit-cache form the sampler and trainer use."""

    def __init__(
        self,
        cfg: DecoderConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = "none"  # models/remat.py: set by set_remat (config.remat)
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [
                Block(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for i in range(cfg.num_layers)
            ]
        )
        self.norm = make_norm(cfg, cfg.hidden_size, param_dtype)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

    def init_cache(self, batch: int, length: int, dtype=None) -> Cache:
        cfg = self.cfg
        shape = (batch, length, cfg.num_kv_heads, cfg.dim_per_head)  # [B, S, K, H]
        dtype = dtype or self.dtype
        cache = []
        for i in range(cfg.num_layers):
            layer = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            if cfg.slides(i):
                layer["pos"] = jnp.zeros((batch, length), jnp.int32)  # [B, S] key positions
            cache.append(layer)
        return cache

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        valid = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask
        return self.forward(input_ids, positions_from_mask(valid), causal_mask(valid))[0]

    def forward(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        x, new_cache = self.hidden_states(tokens, positions, mask, cache, cache_index)
        return self.head(x), new_cache

    def head(self, x: jax.Array) -> jax.Array:
        """Final hidden states [B, T, D] -> logits [B, T, V] float32 (soft-capped if configured).
        Apart from `forward` so that scoring keeps only the rows it needs before the head, which
        is most of a small model's FLOPs."""
        cfg = self.cfg
        if cfg.tie_embeddings:
            logits = dense(self.embed_tokens.attend, x)
        else:
            logits = dense(self.lm_head, x)
        logits = constrain_rows(logits.astype(jnp.float32), vocab=True)  # [B, T, V]
        if cfg.final_softcap is not None:
            logits = softcap(logits, cfg.final_softcap)
        return logits

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """`forward` up to the output head: final-normed hidden states [B, T, D] (what the fused
        loss multiplies by `unembedding()` chunk by chunk), and the cache."""
        cfg = self.cfg
        x = self.embed_tokens(tokens)  # [B, T, D]
        if cfg.scale_embeddings:
            # In the compute dtype, as HF: bfloat16 rounds sqrt(3072) to 55.5, and Gemma was
            # trained so.
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype)
        new_cache = [] if cache is not None else None
        x = constrain_rows(x)  # rows stay split over the mesh's batch axes (sharding.py)
        # Rematerialized layers (config.remat) when scoring whole sequences; never in decoding.
        remat = "none" if cache is not None else getattr(self, "remat", "none")
        block = remat_call(remat, lambda layer, *args: layer(*args))
        for i, layer in enumerate(self.layers):
            if cache is None:
                x, c = block(layer, x, positions, mask)
            else:
                x, c = layer(x, positions, mask, cache[i], cache_index)
            x = constrain_rows(x)
            if cache is not None:
                new_cache.append(c)
        return self.norm(x), new_cache

    def unembedding(self) -> jax.Array:
        """The output head as [D, V] in the compute dtype: logits = hidden_states @ this (then
        cfg.final_softcap)."""
        if self.cfg.tie_embeddings:
            return self.embed_tokens.embedding[...].T.astype(self.dtype)
        return self.lm_head.kernel[...].astype(self.dtype)


def causal_mask(valid: jax.Array) -> jax.Array:
    """[B, T] validity -> [B, T, T] mask: causal, and never attend to padding."""
    t = valid.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & valid[:, None, :].astype(bool)


def positions_from_mask(valid: jax.Array) -> jax.Array:
    """Per-row positions that skip left padding: [B, T] -> [B, T] (pads get 0)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


# ---------------------------------------------------------------------------- functional view
def functional(model: Decoder) -> tuple[Any, Callable, Callable]:
    """Split a decoder into (params, apply_fn, init_cache) for jitted code.

    apply_fn(params, tokens, positions, mask, cache=None, cache_index=None) -> (logits, cache).
    """
    graphdef, params = nnx.split(model)

    def apply_fn(params, tokens, positions, mask, cache=None, cache_index=None):
        return nnx.merge(graphdef, params).forward(tokens, positions, mask, cache, cache_index)

    return params, apply_fn, model.init_cache


def causal_lm_decoding(apply_fn: Callable, init_cache: Callable) -> Decoding:
    """Decoding for a decoder-only model reached through

        apply_fn(params, tokens [B, T], positions [B, T], mask [B, T, S], cache, cache_index)
            -> (logits [B, T, V], cache)
        init_cache(batch, length) -> cache

    Prompts are left-padded to a common length P, so every row writes the same cache slot at each
    step, while RoPE positions are per row (pads are skipped).
    """

    def prefill(params, prompt, prompt_mask, max_new_tokens):
        b, p = prompt.shape
        s = p + max_new_tokens
        prompt_mask = prompt_mask.astype(bool)
        key_valid = jnp.zeros((b, s), bool).at[:, :p].set(prompt_mask)  # [B, S]
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)  # [B, P]
        causal = jnp.arange(s)[None, :] <= jnp.arange(p)[:, None]  # [P, S]
        mask = causal[None] & key_valid[:, None, :]  # [B, P, S]
        logits, cache = apply_fn(params, prompt, positions, mask, init_cache(b, s), 0)
        prompt_len = prompt_mask.sum(axis=1).astype(jnp.int32)  # [B]
        return logits[:, -1], (cache, key_valid, prompt_len, jnp.int32(p))

    def step(params, tokens, index, state):
        cache, key_valid, prompt_len, p = state
        slot = p + index
        key_valid = key_valid.at[:, slot].set(True)
        positions = (prompt_len + index)[:, None]  # [B, 1]
        logits, cache = apply_fn(
            params, tokens[:, None], positions, key_valid[:, None, :], cache, slot
        )
        return logits[:, -1], (cache, key_valid, prompt_len, p)

    return Decoding(prefill, step)


def decoder_functions(model: Decoder) -> tuple[Any, LMFunctions]:
    """(params, LMFunctions) of a decoder-only model: prompt and completion are one sequence."""
    graphdef, params = nnx.split(model)

    def hidden(p, prompt, prompt_mask, completion, completion_mask):
        n_prompt, n = prompt.shape[1], completion.shape[1]
        tokens = jnp.concatenate([prompt, completion], axis=1)  # [B, P+N]
        valid = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
        x = nnx.merge(graphdef, p).hidden_states(
            tokens, positions_from_mask(valid), causal_mask(valid)
        )[0]
        return x[:, n_prompt - 1 : n_prompt + n - 1]  # [B, N, D]; position t predicts t + 1

    def score(p, *args):
        # The head on the scored rows only: the prompt's are dropped before it, not after.
        return nnx.merge(graphdef, p).head(hidden(p, *args))  # [B, N, V]

    def apply_last(p, tokens, positions, mask, cache=None, cache_index=None):
        # Decoding reads the last position's logits only: the prefill's head on one row, not
        # on the whole prompt.
        m = nnx.merge(graphdef, p)
        x, cache = m.hidden_states(tokens, positions, mask, cache, cache_index)
        return m.head(x[:, -1:]), cache  # [B, 1, V]

    return params, LMFunctions(
        score,
        causal_lm_decoding(apply_last, model.init_cache),
        model.cfg.vocab_size,
        hidden=hidden,
        unembedding=lambda p: nnx.merge(graphdef, p).unembedding(),
        final_softcap=model.cfg.final_softcap,
    )
