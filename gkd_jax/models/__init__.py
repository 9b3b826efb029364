"""Model families and the functional view of an NNX model used at the jit boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from gkd_jax.models.decoder import Decoder, DecoderConfig

# Compute dtypes by config name; parameters are always kept in float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def functional(model: nnx.Module) -> tuple[Any, Callable, Callable]:
    """Split `model` into (params, apply_fn, init_cache) for jitted code.

    apply_fn(params, tokens, positions, mask, cache=None, cache_index=None) -> (logits, cache).
    """
    graphdef, params = nnx.split(model)

    def apply_fn(params, tokens, positions, mask, cache=None, cache_index=None):
        return nnx.merge(graphdef, params)(tokens, positions, mask, cache, cache_index)

    return params, apply_fn, model.init_cache


def build_decoder(cfg: DecoderConfig, *, seed: int = 0, dtype=jnp.float32) -> Decoder:
    return Decoder(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


__all__ = ["COMPUTE_DTYPES", "Decoder", "DecoderConfig", "build_decoder", "functional"]
