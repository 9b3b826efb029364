"""LoRA (Hu et al. 2021) for the student: frozen base weights, trainable low-rank adapters.

A targeted linear layer computes y = x W + b + (alpha / r) (x A) B, A [in, r] random (peft's
Kaiming-uniform bound 1 / sqrt(in)) and B [r, out] zero, so training starts at the base model
exactly. The update is never formed as an [in, out] matrix while training: the forward pass
and the gradient go through the [tokens, r] product x A, so each layer's gradient and
optimizer state are r (in + out) numbers, not in x out.

  add_lora        replaces the nnx.Linear layers whose path matches config.lora.targets by
                  LoRALinear, in place. The base kernel and bias keep their paths
                  (layers/0/self_attn/q_proj/kernel), so the sharding rules, checkpoints and
                  Hugging Face mappings see them unchanged; the adapters are .../lora_a and
                  .../lora_b, of type nnx.LoRAParam (a Param).
  split_trainable the adapters and the frozen rest of a parameter tree: the step differentiates
  / join          and the optimizer updates the adapters only, and train-state checkpoints hold
                  only them (the base is read again from config.init on every start).
  merged          a plain model holding W + (alpha / r) A B: what WORKDIR/model and the Hugging
                  Face export are, so they load without knowing about LoRA.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gkd_jax.config.defaults import LORA_TARGETS
from gkd_jax.parallel import sharding

# The attention and MLP projections (config.lora.targets' default), searched in each linear
# layer's path: "layers/3/self_attn/q_proj", "encoder/block/1/layer/0/SelfAttention/q"; the
# output head is "lm_head".
DEFAULT_TARGETS = LORA_TARGETS


def init_adapters(key: jax.Array, n_in: int, n_out: int, rank: int, dtype) -> tuple:
    """(A [in, r], B [r, out]): A uniform in +-1/sqrt(in) (peft's kaiming_uniform(a=sqrt(5))),
    B zero, so the adapted layer starts as the base layer."""
    bound = 1.0 / np.sqrt(n_in)
    a = jax.random.uniform(key, (n_in, rank), jnp.float32, -bound, bound).astype(dtype)
    return a, jnp.zeros((rank, n_out), dtype)


class LoRALinear(nnx.Linear):
    """nnx.Linear plus the low-rank update (alpha / rank) (x A) B; A [in, r] and B [r, out] are
    nnx.LoRAParam, the base kernel and bias nnx.Param (frozen by the trainer, not here)."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float,
                 rngs: nnx.Rngs, **linear_kw):  # fmt: skip
        super().__init__(in_features, out_features, rngs=rngs, **linear_kw)
        a, b = init_adapters(rngs.params(), in_features, out_features, rank, self.param_dtype)
        self.lora_a, self.lora_b = nnx.LoRAParam(a), nnx.LoRAParam(b)
        self.rank, self.alpha = rank, alpha

    @classmethod
    def from_linear(cls, base: nnx.Linear, a: jax.Array, b: jax.Array, alpha: float) -> LoRALinear:
        """`base` with adapters (a, b): the same kernel and bias Variables, so their paths and
        values are unchanged. Built as shapes first: no full-size kernel is ever allocated."""
        kw = linear_kwargs(base)
        rank = a.shape[1]
        new = nnx.eval_shape(
            lambda: cls(base.in_features, base.out_features, rank=rank, alpha=alpha,
                        rngs=nnx.Rngs(0), **kw)
        )  # fmt: skip
        new.kernel, new.bias = base.kernel, base.bias
        new.lora_a, new.lora_b = nnx.LoRAParam(a), nnx.LoRAParam(b)
        return new

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __call__(self, inputs: jax.Array) -> jax.Array:
        y = super().__call__(inputs)  # x W + b, exactly nnx.Linear's
        x, a, b = self.promote_dtype((inputs, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        # The scale on the [tokens, r] product: the cheapest place for it.
        return y + jnp.dot(jnp.dot(x, a) * self.scale, b)

    def to_linear(self) -> nnx.Linear:
        """A plain nnx.Linear with kernel W + (alpha / r) A B, computed on the host in float32
        (then the kernel's dtype) from the gathered values."""
        w = np.asarray(jax.device_get(self.kernel[...]))
        a, b = (np.asarray(jax.device_get(v[...]), np.float32) for v in (self.lora_a, self.lora_b))
        merged = (w.astype(np.float32) + self.scale * (a @ b)).astype(w.dtype)
        kw = linear_kwargs(self)
        lin = nnx.eval_shape(
            lambda: nnx.Linear(self.in_features, self.out_features, rngs=nnx.Rngs(0), **kw)
        )
        lin.kernel, lin.bias = nnx.Param(merged), self.bias
        return lin


def linear_kwargs(layer: nnx.Linear) -> dict[str, Any]:
    """The constructor arguments of `layer` besides its sizes (and its initializers)."""
    names = ("use_bias", "dtype", "param_dtype", "precision", "dot_general", "promote_dtype",
             "preferred_element_type")  # fmt: skip
    return {n: getattr(layer, n) for n in names}


def path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def linear_layers(model: nnx.Module, targets: str) -> dict[tuple, nnx.Linear]:
    """The model's nnx.Linear layers whose path (`path_name`) `targets` matches (re.search)."""
    pattern = re.compile(targets)
    return {
        path: m
        for path, m in nnx.iter_modules(model)
        if isinstance(m, nnx.Linear) and not isinstance(m, LoRALinear)
        and pattern.search(path_name(path))
    }  # fmt: skip


def check_targets(
    model: nnx.Module, layers: dict[tuple, nnx.Linear], rank: int, targets: str
) -> None:
    """The errors only the model's parameters can show: a `targets` that matches no linear
    layer, a rank above a target's smaller dimension."""
    if not layers:
        names = [path_name(p) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
        raise ValueError(
            f"config.lora.targets={targets!r} matches none of the student's linear layers, e.g. "
            f"{names[:4]} (of {len(names)}); the regex is searched in each layer's path"
        )
    for path, layer in layers.items():
        if rank > min(layer.in_features, layer.out_features):
            raise ValueError(
                f"config.lora.rank={rank} exceeds the smaller dimension of {path_name(path)} "
                f"[{layer.in_features}, {layer.out_features}]: a rank above it adds parameters "
                f"and no expressiveness; use rank <= "
                f"{min(min(m.in_features, m.out_features) for m in layers.values())}"
            )


def add_lora(
    model: nnx.Module,
    *,
    rank: int,
    alpha: float,
    targets: str = DEFAULT_TARGETS,
    seed: int = 0,
    mesh: Mesh | None = None,
) -> nnx.Module:
    """`model` with every linear layer that `targets` matches turned into a LoRALinear (in place;
    returned for chaining). Each layer's A is drawn from fold_in(key(seed), its index); with
    `mesh` the adapters are created in their shardings (sharding.RULES: A split as its kernel's
    input dimension, B as its output dimension)."""
    layers = linear_layers(model, targets)
    check_targets(model, layers, rank, targets)
    key = jax.random.key(seed)

    def init() -> dict[str, dict[str, jax.Array]]:
        # Keyed by the layer's path, so the sharding rules see ".../q_proj/lora_a".
        out = {}
        for i, (path, m) in enumerate(layers.items()):
            k = jax.random.fold_in(key, i)
            a, b = init_adapters(k, m.in_features, m.out_features, rank, m.param_dtype)
            out[path_name(path)] = {"lora_a": a, "lora_b": b}
        return out

    adapters = init() if mesh is None else sharding.shard_init(init, mesh)
    modules = dict(nnx.iter_modules(model))
    for path, layer in layers.items():
        ab = adapters[path_name(path)]
        new = LoRALinear.from_linear(layer, ab["lora_a"], ab["lora_b"], alpha)
        replace_child(modules[path[:-1]], path[-1], new)
    return model


def replace_child(parent: nnx.Module, key, child: nnx.Module) -> None:
    if isinstance(key, int):  # an nnx.List entry
        parent[key] = child
    else:
        setattr(parent, key, child)


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))


def merged(model: nnx.Module) -> nnx.Module:
    """A plain model (no LoRALinear) whose kernels are W + (alpha / r) A B: `model` itself when
    it has no adapters, else a new module graph sharing every other array with it (`model` is
    left as it was: training goes on with it)."""
    if not has_lora(model):
        return model
    copy = nnx.merge(*nnx.split(model))  # new modules and Variables, the same arrays
    modules = dict(nnx.iter_modules(copy))
    for path, m in list(modules.items()):
        if isinstance(m, LoRALinear):
            replace_child(modules[path[:-1]], path[-1], m.to_linear())
    return copy


# ---------------------------------------------------------------------------- train state
def split_trainable(params: nnx.State) -> tuple[nnx.State, nnx.State | None]:
    """(adapters, frozen rest) of a parameter tree holding adapters; (params, None) when it
    holds none, so that a run without LoRA differentiates and updates everything as before."""
    if not isinstance(params, nnx.State):  # a plain tree (a test's, a pure dict): no adapters
        return params, None
    adapters, frozen = nnx.split_state(params, nnx.LoRAParam, ...)
    if not jax.tree.leaves(adapters):
        return params, None
    return adapters, frozen


def join(trainable: nnx.State, frozen: nnx.State | None) -> nnx.State:
    """`split_trainable` undone: the full parameter tree (its structure as before the split)."""
    return trainable if frozen is None else nnx.merge_state(trainable, frozen)


def trainable_params(params: nnx.State) -> nnx.State:
    """What the optimizer updates: the adapters with LoRA, else every parameter."""
    return split_trainable(params)[0]


def on_trainable(fn: Callable, frozen: nnx.State | None) -> Callable:
    """fn(params, *args) as a function of the trainable part, for jax.grad: g(trainable, *args)
    = fn(join(trainable, frozen), *args). `fn` itself without LoRA."""
    if frozen is None:
        return fn

    def g(trainable, *args, **kwargs):
        # Fresh Variables for the frozen part, made in this trace: the closed-over ones belong
        # to the trace that holds the train state, and nnx.remat (config.remat) refuses to
        # update Variables of another trace level when it merges a layer inside its own.
        fresh = jax.tree.map(lambda x: x, frozen)
        return fn(join(trainable, fresh), *args, **kwargs)

    return g
