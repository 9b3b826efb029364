"""Rematerialization of a model's layers (config.remat): what the backward pass recomputes.

  "none"  every activation the backward pass needs is kept from the forward pass (fastest, most
          memory: activations grow with layers x batch x sequence);
  "full"  each layer keeps only its input; its insides are recomputed in the backward pass
          (jax.checkpoint with nothing saveable): about one more forward pass of compute;
  "dots"  each layer keeps the outputs of its projections (matmuls without batch dimensions:
          q/k/v/o, the MLP's), and recomputes the attention scores, softmax, norms and
          activations (jax.checkpoint_policies.dots_with_no_batch_dims_saveable, MaxText's
          "minimal").

Applied per layer through `nnx.remat` (decoder.Block, t5.T5Block) when a model scores a whole
sequence (training, teacher scoring); decoding (with a cache) never runs under it. The values
computed are the same: only what is stored between the forward and backward passes changes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

REMAT_POLICIES = ("none", "full", "dots")
_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def set_remat(model: nnx.Module, remat: str) -> nnx.Module:
    """`model` (a Decoder or T5) with its layers rematerialized by `remat` (REMAT_POLICIES)."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: expected one of {list(REMAT_POLICIES)}")
    model.remat = remat
    return model


def remat_call(remat: str, fn: Callable) -> Callable:
    """`fn(layer, *arrays)` under nnx.remat with `remat`'s policy (`fn` itself for "none")."""
    if remat == "none":
        return fn
    return nnx.remat(fn, policy=_POLICIES[remat], prevent_cse=True)
