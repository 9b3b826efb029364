"""Model families, the functional view used at the jit boundary, and Hugging Face checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from gkd_jax.models.decoder import Decoder, DecoderConfig
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.lm import LMFunctions, causal_lm_functions, causal_lm_hidden
from gkd_jax.sampling import causal_lm_decoding

# Compute dtypes by config name; parameters are always kept in float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def functional(model: Decoder) -> tuple[Any, Callable, Callable]:
    """Split a decoder into (params, apply_fn, init_cache) for jitted code.

    apply_fn(params, tokens, positions, mask, cache=None, cache_index=None) -> (logits, cache).
    """
    graphdef, params = nnx.split(model)

    def apply_fn(params, tokens, positions, mask, cache=None, cache_index=None):
        return nnx.merge(graphdef, params).forward(tokens, positions, mask, cache, cache_index)

    return params, apply_fn, model.init_cache


def functional_lm(model: nnx.Module) -> tuple[Any, LMFunctions]:
    """(params, LMFunctions) for a model of any family: what the trainer and sampler use."""
    if isinstance(model, Decoder):
        params, apply_fn, init_cache = functional(model)
        fns = causal_lm_functions(apply_fn, init_cache, model.cfg.vocab_size)
        graphdef = nnx.graphdef(model)
        hidden = causal_lm_hidden(lambda p, *a: nnx.merge(graphdef, p).hidden_states(*a)[0])

        def score(p, *args):
            # The head on the scored rows only: the prompt's are dropped before it, not after.
            return nnx.merge(graphdef, p).head(hidden(p, *args))  # [B, N, V]

        def apply_last(p, tokens, positions, mask, cache=None, cache_index=None):
            # Decoding reads the last position's logits only: the prefill's head on one row, not
            # on the whole prompt.
            m = nnx.merge(graphdef, p)
            x, cache = m.hidden_states(tokens, positions, mask, cache, cache_index)
            return m.head(x[:, -1:]), cache  # [B, 1, V]

        return params, dataclasses.replace(
            fns,
            score=score,
            decoding=causal_lm_decoding(apply_last, init_cache),
            hidden=hidden,
            unembedding=lambda p: nnx.merge(graphdef, p).unembedding(),
            final_softcap=model.cfg.final_softcap,
        )
    from gkd_jax.models.t5 import t5_functions

    return t5_functions(model)


def build_decoder(cfg: DecoderConfig, *, seed: int = 0, dtype=jnp.float32) -> Decoder:
    return Decoder(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


__all__ = [
    "COMPUTE_DTYPES",
    "Decoder",
    "DecoderConfig",
    "LMFunctions",
    "build_decoder",
    "functional",
    "functional_lm",
    "load_pretrained",
    "save_pretrained",
]
