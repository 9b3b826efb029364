"""Model families, the functional view used at the jit boundary, and Hugging Face checkpoints.

One family per file (decoder.py, t5.py), each with its `*_functions(model)`; `functional_lm`
picks the family's. hf.py and hf_*.py read and write Hugging Face checkpoints.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from gkd_jax.models import lora
from gkd_jax.models.decoder import Decoder, DecoderConfig, decoder_functions, functional
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.lm import LMFunctions
from gkd_jax.models.t5 import t5_functions
from gkd_jax.parallel import distributed

# Compute and parameter dtypes by config name (config.dtype, config.param_dtype,
# config.teacher_param_dtype).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def functional_lm(model: nnx.Module) -> tuple[Any, LMFunctions]:
    """(params, LMFunctions) for a model of any family: what the trainer and sampler use."""
    if isinstance(model, Decoder):
        return decoder_functions(model)
    return t5_functions(model)


def with_params(model: nnx.Module, params: Any) -> nnx.Module:
    """`model` holding `params` (functional_lm's split undone), gathered to this host first when
    they are sharded over hosts: what checkpoint.save_model writes. A LoRA student comes back
    as a plain model with its adapters merged into the kernels (lora.merged; `model` itself
    keeps them)."""
    nnx.update(model, distributed.to_host(params))
    return lora.merged(model)


def build_decoder(
    cfg: DecoderConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32
) -> Decoder:
    return Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


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
    "with_params",
]
