"""The device mesh and a short table of partition rules: FSDP and Megatron-style tensor sharding.

Mesh axes ("data", "fsdp", "tensor"): batch rows are split over "data" x "fsdp"; parameters are
split over "fsdp" on one dimension (ZeRO-3: each device holds a slice, gathered where used) and
over "tensor" on the other, Megatron-style: q/k/v, gate/up and the vocabulary of the embedding
and output head are column-parallel (split by output: heads, MLP units, vocabulary entries),
o/down row-parallel (split by input), so an attention or MLP block needs one reduction.

Rules match regexes against a parameter's flattened path ("layers/0/self_attn/q_proj/kernel";
nnx.State paths end in "/value", which the rules allow). The optimizer state holds one tree like
the parameters per moment, so the same rules place it: Adam's mu for a kernel shards as the
kernel. Activations keep their rows split over "data" x "fsdp" (`constrain_rows`, which the
models call at block boundaries when traced under `activation_mesh`), so XLA gathers each FSDP
weight where it is used rather than splitting activations along it; GSPMD places the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # batch rows split over these

_COLUMN = P("fsdp", "tensor")  # kernel [in, out] split by output: heads, MLP units, vocab
_ROW = P("tensor", "fsdp")  # kernel [in, out] split by input
_END = r"(/value)?$"
# The layers whose kernel is column-parallel (split by output) and row-parallel (by input).
_COLUMN_LAYERS = (
    r"(q_proj|k_proj|v_proj|gate_proj|up_proj|Attention/(q|k|v)|DenseReluDense/(wi|wi_0|wi_1)"
    r"|lm_head)"
)
_ROW_LAYERS = r"(o_proj|down_proj|Attention/o|DenseReluDense/wo)"

# (regex searched in the flattened path, spec). First match wins. Every parameter of the
# families we load (models/decoder.py, models/t5.py) must match one: tests/test_sharding.py
# fails on a new parameter name that none matches.
RULES: tuple[tuple[str, P], ...] = (
    # Embeddings [V, D]: vocabulary-parallel (each "tensor" shard owns V / tensor entries).
    (r"(embed_tokens|shared)/embedding" + _END, P("tensor", "fsdp")),
    (r"lm_head/kernel" + _END, _COLUMN),  # [D, V]
    # Decoder attention / MLP (Llama, Qwen, Gemma names).
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel" + _END, _COLUMN),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/bias" + _END, P("tensor")),
    (r"(o_proj|down_proj)/kernel" + _END, _ROW),
    (r"(o_proj|down_proj)/bias" + _END, P()),  # added after the reduction: whole
    # T5 attention (SelfAttention, EncDecAttention) and feed-forward (DenseReluDense).
    (r"Attention/(q|k|v)/kernel" + _END, _COLUMN),
    (r"Attention/o/kernel" + _END, _ROW),
    (r"relative_attention_bias/embedding" + _END, P()),  # [buckets, heads]: tiny
    (r"DenseReluDense/(wi|wi_0|wi_1)/kernel" + _END, _COLUMN),
    (r"DenseReluDense/wo/kernel" + _END, _ROW),
    # Norm scales [D] are small and read whole by every device.
    (r"(norm|layernorm|layer_norm)/weight" + _END, P()),
    # LoRA adapters (models/lora.py): A [in, r] split as its kernel's input dimension, B [r, out]
    # as its output one (so x A B comes out split as x W does); the rank r stays whole.
    (_COLUMN_LAYERS + r"/lora_a" + _END, P("fsdp")),
    (_COLUMN_LAYERS + r"/lora_b" + _END, P(None, "tensor")),
    (_ROW_LAYERS + r"/lora_a" + _END, P("tensor")),
    (_ROW_LAYERS + r"/lora_b" + _END, P(None, "fsdp")),
    (r"lora_[ab]" + _END, P()),  # adapters of any other layer a user's targets pick: whole
)

_fallbacks_logged: set[tuple[str, int]] = set()


def mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with the one -1 resolved to "the rest" of `n_devices`; checked."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(
                f"config.mesh.{name}={size!r} is invalid: must be an integer >= 1, or -1 for "
                "the devices the other axes leave"
            )
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(
            f"config.mesh.{' and config.mesh.'.join(rest)} are all -1: at most one mesh axis "
            "may take the rest of the devices"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if rest:
        if n_devices % fixed:
            raise ValueError(
                f"{_describe(sizes)}: the fixed axes ({fixed} devices) do not divide the "
                f"{n_devices} devices; change config.mesh.* to divide {n_devices}"
            )
        sizes[rest[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(
            f"{_describe(sizes)} span {math.prod(sizes.values())} devices, but there are "
            f"{n_devices}: set config.mesh.* so that data x fsdp x tensor = {n_devices} (or one "
            "of them to -1)"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def _describe(sizes: dict[str, int]) -> str:
    return ", ".join(f"config.mesh.{k}={v}" for k, v in sizes.items())


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all, every host's).

    -1 (at most one axis) means the devices the other axes leave. "tensor" is the innermost axis,
    so its shards sit on neighbouring devices (one host, the fastest links)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if devices == jax.devices():
        # Lays the axes along the physical topology (TPU torus, hosts) where there is one.
        grid = mesh_utils.create_device_mesh(shape, devices)
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (the leading dimension) over ("data", "fsdp"); everything else whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def loss_mesh(mesh: Mesh, vocab: int, rows: int) -> Mesh | None:
    """The mesh for loss_forms' chunked / fused losses of `rows` rows over `vocab` entries:
    `mesh` itself (vocabulary-parallel over "tensor", rows over data x fsdp) when they divide;
    else the same devices with every axis on rows (a vocabulary the tensor axis does not divide,
    e.g. an odd tokenizer size; logged); None when the rows do not divide either."""
    n_tensor, n_rows = mesh.shape["tensor"], mesh.shape["data"] * mesh.shape["fsdp"]
    if vocab % n_tensor == 0 and rows % n_rows == 0:
        return mesh
    if rows % mesh.size == 0:
        if jax.process_index() == 0:
            print(
                f"[sharding] the loss's vocabulary ({vocab}) does not divide over mesh.tensor="
                f"{n_tensor}: the chunked/fused loss splits rows over all {mesh.size} devices "
                "instead",
                flush=True,
            )
        return Mesh(mesh.devices.reshape(n_rows, n_tensor, 1), AXES)
    return None


def constrain_rows(x: jax.Array, *, vocab: bool = False) -> jax.Array:
    """x [B, ...] pinned to rows over ("data", "fsdp") when traced under a mesh with those axes
    (`activation_mesh`); unchanged otherwise (no mesh, another mesh, rows that do not divide).
    `vocab`: x is logits [B, T, V], whose vocabulary stays split over "tensor" where it divides.

    Models call this on their activations: without it XLA may follow the FSDP weights' split of
    the hidden dimension instead and hold every row's logits on each device (4x the step's
    temporary memory with fsdp=8, measured)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(AXES) <= set(mesh.axis_names):
        return x
    if x.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return x
    split_vocab = vocab and mesh.shape["tensor"] > 1 and x.shape[-1] % mesh.shape["tensor"] == 0
    if split_vocab:
        return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *[None] * (x.ndim - 2), "tensor"))
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def activation_mesh(mesh: Mesh):
    """Context for tracing a model on `mesh`: turns on `constrain_rows` inside it."""
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def models_on_mesh(fns, mesh: Mesh):
    """LMFunctions whose `score` and `hidden` trace under `activation_mesh(mesh)`. Only the model
    calls: the loss's shard_map (possibly on another mesh, `loss_mesh`) must run outside it."""

    def on_mesh(fn):
        if fn is None:
            return None

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with activation_mesh(mesh):
                return fn(*args, **kwargs)

        return wrapped

    return dataclasses.replace(fns, score=on_mesh(fns.score), hidden=on_mesh(fns.hidden))


def path_string(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def rule_for(path: str) -> P | None:
    """The spec of the first rule matching `path`, None when no rule does."""
    for pattern, spec in RULES:
        if re.search(pattern, path):
            return spec
    return None


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The partition spec of one array: its rule's, with every dimension that its mesh axes do
    not divide left whole (logged once per path and dimension). Scalars and unmatched arrays are
    replicated."""
    spec = rule_for(path)
    if spec is None or not shape:
        return P()
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    if len(spec) > len(shape):  # a rule for a kernel applied to something flatter
        return P()
    fitted = []
    for dim, (size, axes) in enumerate(zip(shape, spec, strict=True)):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        split = math.prod(mesh.shape[a] for a in names)
        if split > 1 and size % split:
            if (path, dim) not in _fallbacks_logged and jax.process_index() == 0:
                _fallbacks_logged.add((path, dim))
                print(
                    f"[sharding] {path} {tuple(shape)}: dim {dim} ({size}) does not divide "
                    f"over mesh axes {names} ({split}); kept whole on that dim",
                    flush=True,
                )
            axes = None
        fitted.append(axes if split > 1 else None)
    # All-None is replicated: P() reads better in specs and logs than P(None, None).
    return P(*fitted) if any(fitted) else P()


def tree_specs(tree: Any, mesh: Mesh) -> Any:
    """PartitionSpecs for every array (or ShapeDtypeStruct) of a pytree, by the rules."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(path_string(path), tuple(np.shape(x)), mesh), tree
    )


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for every array of a pytree: parameters, optimizer state, a train state."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        tree_specs(tree, mesh),
        is_leaf=lambda x: isinstance(x, P),
    )


def param_shardings(abstract_params: Any, mesh: Mesh) -> Any:
    """Alias of `tree_shardings` for a tree of jax.ShapeDtypeStruct (from jax.eval_shape)."""
    return tree_shardings(abstract_params, mesh)


def unmatched_paths(tree: Any) -> list[str]:
    """Paths of the non-scalar arrays of `tree` that no rule matches (they would be replicated)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [path_string(p) for p, x in leaves if np.ndim(x) and rule_for(path_string(p)) is None]


def shard_init(init_fn: Callable[[], Any], mesh: Mesh) -> Any:
    """`init_fn()` (a pytree of arrays), computed with every array created in its sharding:
    no device ever holds a whole parameter that the rules split."""
    shardings = tree_shardings(jax.eval_shape(init_fn), mesh)
    return jax.jit(init_fn, out_shardings=shardings)()


def shard_model(build_fn: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """`build_fn()` (an NNX model) with its parameters initialized in their shardings."""
    graphdef, _ = nnx.split(nnx.eval_shape(build_fn))
    return nnx.merge(graphdef, shard_init(lambda: nnx.split(build_fn())[1], mesh))


def init_train_state(
    params: Any, tx, mesh: Mesh, trainable: Callable[[Any], Any] = lambda p: p
) -> tuple[dict[str, Any], Any]:
    """({"params", "opt_state", "step"}, its shardings): the parameters placed by the rules (a
    no-op where they are already), the optimizer state created in its shardings (each moment as
    its parameter), never whole on one device. The optimizer state is that of
    `trainable(params)`: all of them, or a LoRA student's adapters (models/lora.py)."""
    params = jax.device_put(params, tree_shardings(params, mesh))
    opt_params = trainable(params)
    opt_shardings = tree_shardings(jax.eval_shape(tx.init, opt_params), mesh)
    state = {
        "params": params,
        "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(opt_params),
        "step": jax.device_put(np.zeros((), np.int32), replicated(mesh)),
    }
    return state, jax.tree.map(lambda x: x.sharding, state)


def put(tree: Any, mesh: Mesh) -> Any:
    """Place the arrays of `tree` (host or device) by the rules, one array at a time."""
    return jax.device_put(tree, tree_shardings(tree, mesh))


def per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds of a tree of shapes placed in `shardings` (the largest shard)."""
    leaves = jax.tree.leaves(tree)
    shards = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    return sum(
        math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
        for x, s in zip(leaves, shards, strict=True)
    )
