"""Memory-lean forms of the GKD loss: chunked over positions, fused with the unembedding, and
vocabulary-parallel.

Each form returns what `masked_sum_count(generalized_jsd(s, t, ...), mask, reduction)` returns,
(sum, count) float32 scalars, without ever holding every position's logits at once:

  chunked_jsd_loss  from logits [B, T, V]: one chunk of positions at a time; the only O(B*T*V)
                    buffer is the gradient itself, written over the student logits' buffer when
                    the caller donates it (`jax.jit(..., donate_argnums=...)`).
  fused_jsd_loss    from final hidden states [B, T, D] and unembeddings [D, V]: logits exist one
                    chunk at a time, in the forward pass and the backward alike.

Both take `mesh=`: the vocabulary is then sharded over the mesh axis "tensor" and the batch over
the others, and each device holds a [chunk, V / tensor] slice of logits; the softmax is
normalized with per-shard max / sum-exp combined by pmax / psum.

How the gradient stays small: a custom VJP computes each chunk's gradient in the forward pass,
right after its value (the per-position weights of the reduction are known then: the loss is
linear in the per-token divergences), so the backward pass only scales the stored gradients by
the incoming cotangent. One pass over the logits instead of the two of rematerialization. The
price: forward-mode autodiff and second derivatives of these forms are not supported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gkd_jax.objectives.losses import (
    REDUCTIONS,
    generalized_jsd,
    jsd_from_log_probs,
    masked_sum_count,
)

VOCAB_AXIS = "tensor"
# Default chunk sizes as elements of one [chunk, V] float32 buffer, of which XLA keeps ~8 per
# chunk: small for logits (elementwise work, faster in cache), larger when fused, where each chunk
# rereads the unembeddings and needs enough rows for its matmuls to be compute-bound.
CHUNK_ELEMENTS = 2**19  # 2 MiB
FUSED_CHUNK_ELEMENTS = 2**24  # 64 MiB

RowFn = Callable[[jax.Array, jax.Array], jax.Array]  # ([C, V], [C, V]) -> [C]


# ---------------------------------------------------------------- vocabulary-parallel divergence


def _sharded_log_softmax(z: jax.Array, temperature: jax.Array, axis: str) -> jax.Array:
    """Global log-softmax of logits whose vocabulary is split over mesh axis `axis`."""
    z = z.astype(jnp.float32) / temperature  # [C, V/k]
    # The shift only keeps exp() in range; it cancels exactly, so no gradient goes through it.
    shift = lax.pmax(jnp.max(lax.stop_gradient(z), axis=-1, keepdims=True), axis)  # [C, 1]
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    sum_exp = lax.psum(jnp.sum(jnp.exp(z - shift), axis=-1, keepdims=True), axis)  # [C, 1]
    return z - (shift + jnp.log(sum_exp))  # [C, V/k]


def _vocab_parallel_jsd(
    zs: jax.Array, zt: jax.Array, *, beta: float, temperature: jax.Array, axis: str
) -> jax.Array:
    """`generalized_jsd` per row, for logits [C, V/k] holding this device's vocabulary shard:
    global log-probabilities (psum'd normalizers), each shard's share of the sum, psum'd."""
    logp_s = _sharded_log_softmax(zs, temperature, axis)  # [C, V/k]
    logp_t = _sharded_log_softmax(zt, temperature, axis)
    return lax.psum(jsd_from_log_probs(logp_s, logp_t, beta=beta), axis)


# ---------------------------------------------------------------- one device's chunk loops


def _row_fn(beta: float, axis: str | None, temperature: jax.Array) -> RowFn:
    """The per-row divergence of one chunk: losses.generalized_jsd, or its vocab-parallel twin."""
    if axis is None:
        return functools.partial(generalized_jsd, beta=beta, temperature=temperature)
    return functools.partial(_vocab_parallel_jsd, beta=beta, temperature=temperature, axis=axis)


def _for_each_chunk(n_rows: int, chunk: int, body: Callable, carry):
    """carry = body(start, size, carry) over rows [0, chunk), [chunk, 2 chunk), ...

    A last partial chunk gets a static size of its own (one more trace of `body`) rather than
    padding, which would copy whole [N, V] arrays.
    """
    n_full, tail = divmod(n_rows, chunk)
    if n_full:
        carry = lax.fori_loop(0, n_full, lambda i, c: body(i * chunk, chunk, c), carry)
    if tail:
        carry = body(n_full * chunk, tail, carry)
    return carry


def _rows(x: jax.Array, start, size: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _logits_chunks(beta, axis, chunk, with_grad, s, t, temperature, w):
    """Per-row divergences [N] of logits s, t [N, V], and Σ_n w_n d(div_n)/ds [N, V] if asked.

    The gradient overwrites s chunk by chunk (the loop reads each chunk before writing it), so
    with s donated XLA keeps one [N, V] buffer for both.
    """
    row_fn = _row_fn(beta, axis, temperature)

    def body(start, size, carry):
        values, grad = carry  # grad: s, overwritten chunk by chunk; () for the values alone
        s_c, t_c = _rows(grad if with_grad else s, start, size), _rows(t, start, size)  # [C, V]
        if with_grad:
            v_c, vjp = jax.vjp(lambda z: row_fn(z, t_c), s_c)
            grad = lax.dynamic_update_slice_in_dim(grad, vjp(_rows(w, start, size))[0], start, 0)
        else:
            v_c = row_fn(s_c, t_c)  # [C]
        return lax.dynamic_update_slice_in_dim(values, v_c, start, 0), grad

    values = jnp.zeros_like(w, dtype=jnp.float32)  # [N]; zeros_like keeps shard_map's typing
    values, grad = _for_each_chunk(s.shape[0], chunk, body, (values, s if with_grad else ()))
    return values, (grad,) if with_grad else ()


def _add_outer_product(acc: jax.Array, h: jax.Array, dz: jax.Array, cols: int = 4096):
    """acc + h^T @ dz for acc [D, V], h [C, D], dz [C, V], `cols` vocabulary columns at a time:
    XLA adds a whole [D, V] product into acc only after materializing it, the size of acc."""

    def body(start, size, acc):
        dz_cols = lax.dynamic_slice_in_dim(dz, start, size, axis=1)  # [C, cols]
        update = jnp.dot(h.T, dz_cols.astype(h.dtype), preferred_element_type=jnp.float32)
        update += lax.dynamic_slice_in_dim(acc, start, size, axis=1)  # [D, cols]
        return lax.dynamic_update_slice_in_dim(acc, update, start, axis=1)

    return _for_each_chunk(acc.shape[1], cols, body, acc)


def _fused_chunks(beta, axis, chunk, caps, batch_axes, with_grad, hs, ws, ht, wt, temperature, w):
    """Like _logits_chunks from hidden states hs [N, Ds], ht [N, Dt] and unembeddings ws [Ds, V],
    wt [Dt, V]; the gradients are w.r.t. hs and ws, the teacher's inputs get none."""
    row_fn = _row_fn(beta, axis, temperature)

    def softcap(z, cap):  # final-logit soft-cap (Gemma 2)
        return z if cap is None else cap * jnp.tanh(z / cap)

    def body(start, size, carry):
        values, grads = carry
        h_c = _rows(hs, start, size)  # [C, Ds]
        zs = jnp.dot(h_c, ws, preferred_element_type=jnp.float32)  # [C, V]
        zt = jnp.dot(_rows(ht, start, size), wt, preferred_element_type=jnp.float32)
        zt = lax.stop_gradient(softcap(zt, caps[1]))  # [C, V]
        student_jsd = lambda z: row_fn(softcap(z, caps[0]), zt)  # noqa: E731
        if not with_grad:
            return lax.dynamic_update_slice_in_dim(values, student_jsd(zs), start, 0), grads
        # The matmuls' gradients by hand rather than autodiff, for _add_outer_product.
        v_c, vjp = jax.vjp(student_jsd, zs)
        (dz,) = vjp(_rows(w, start, size))  # [C, V]
        dh_c = jnp.dot(dz.astype(ws.dtype), ws.T, preferred_element_type=jnp.float32)  # [C, Ds]
        dh = lax.dynamic_update_slice_in_dim(grads[0], dh_c.astype(hs.dtype), start, 0)
        dw = _add_outer_product(grads[1], h_c, dz)
        return lax.dynamic_update_slice_in_dim(values, v_c, start, 0), (dh, dw)

    values = jnp.zeros_like(w, dtype=jnp.float32)  # [N]
    if not with_grad:
        return _for_each_chunk(hs.shape[0], chunk, body, (values, ()))
    # Each device adds up its own part of dh (a vocabulary shard's) and dW (a batch shard's), and
    # they are all-reduced once at the end; the casts give the loop carries that sharding type.
    dh = lax.pcast(jnp.zeros_like(hs), axis or (), to="varying")  # [N, Ds]
    dw = lax.pcast(jnp.zeros_like(ws, dtype=jnp.float32), batch_axes, to="varying")  # [Ds, V]
    values, (dh, dw) = _for_each_chunk(hs.shape[0], chunk, body, (values, (dh, dw)))
    if batch_axes:
        dw = lax.psum(dw, batch_axes)
    if axis is not None:
        dh = lax.psum(dh, axis)
    return values, (dh, dw.astype(ws.dtype))


# ---------------------------------------------------------------- the custom VJP around them


def _scale(x: jax.Array, g: jax.Array, rows: int = 64) -> jax.Array:
    """x * g, `rows` rows at a time: XLA copies the result of one big multiply instead of writing
    it over the donated buffer it reads, but updates slices of a loop carry in place."""
    flat = x.reshape(-1, x.shape[-1])  # [N, X]

    def body(start, size, buf):
        scaled = (_rows(buf, start, size) * g).astype(buf.dtype)
        return lax.dynamic_update_slice_in_dim(buf, scaled, start, 0)

    return _for_each_chunk(flat.shape[0], rows, body, flat).reshape(x.shape)


def _loss_with_grads_in_forward(chunks, reduction, mesh, diff_specs, other_specs, batch_axes):
    """`chunks(with_grad, *flat_inputs, weights) -> (values [N], grads)` as a function of
    (diff_inputs, other_inputs, mask [B, T]) -> (sum, count), differentiable w.r.t. diff_inputs."""
    mask_spec = P(batch_axes or None, None)

    def on_mesh(fn, in_specs, out_specs):
        if mesh is None:
            return fn
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

    def compute(with_grad, diff, other, mask):  # on one device's rows and vocabulary shard
        # The sum is linear in the per-token divergences, so its gradient w.r.t. them, the weight
        # of each position, is known before any is computed: masked_sum_count's own VJP.
        weights = jax.grad(lambda v: masked_sum_count(v, mask, reduction)[0])(
            jnp.zeros_like(mask, dtype=jnp.float32)
        )  # [B, T]
        flat = [x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x for x in (*diff, *other)]
        values, grads = chunks(with_grad, *flat, weights.reshape(-1))  # [N], ([N, X] | [D, V])
        total, count = masked_sum_count(values.reshape(mask.shape), mask, reduction)
        if batch_axes:  # (sum, count) pairs add up over row shards
            total, count = lax.psum((total, count), batch_axes)
        return total, count, tuple(g.reshape(x.shape) for g, x in zip(grads, diff))  # noqa: B905

    specs = (diff_specs, other_specs, mask_spec)
    primal = on_mesh(functools.partial(compute, False), specs, (P(), P(), ()))
    forward = on_mesh(functools.partial(compute, True), specs, (P(), P(), diff_specs))
    scale = on_mesh(lambda xs, g: tuple(_scale(x, g) for x in xs), (diff_specs, P()), diff_specs)

    @jax.custom_vjp
    def loss(diff, other, mask):
        return primal(diff, other, mask)[:2]

    def loss_fwd(diff, other, mask):
        total, count, grads = forward(diff, other, mask)
        return (total, count), grads

    def loss_bwd(grads, cotangents):  # the count has no gradient
        return scale(grads, cotangents[0]), None, None

    loss.defvjp(loss_fwd, loss_bwd)
    return loss


# ---------------------------------------------------------------- public API


def _check(beta: float, temperature, reduction: str, chunk: int | None) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions, got {chunk!r}")


def _layout(mesh: Mesh | None, batch: int, vocab: int) -> tuple[tuple[str, ...], str | None, int]:
    """(batch mesh axes, vocab mesh axis, vocab shard size) for `mesh`, checked."""
    if mesh is None:
        return (), None, vocab
    if VOCAB_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} lack the vocabulary axis {VOCAB_AXIS!r}")
    batch_axes = tuple(a for a in mesh.axis_names if a != VOCAB_AXIS)
    n_vocab = mesh.shape[VOCAB_AXIS]
    n_batch = math.prod(mesh.shape[a] for a in batch_axes)
    if vocab % n_vocab or batch % n_batch:
        raise ValueError(
            f"vocab {vocab} must divide by mesh axis {VOCAB_AXIS!r} ({n_vocab}) and batch {batch} "
            f"by the other axes {batch_axes} ({n_batch}); pad the vocabulary or change the mesh"
        )
    return batch_axes, VOCAB_AXIS, vocab // n_vocab


def default_chunk(vocab_shard: int, *, fused: bool) -> int:
    """Positions per chunk when `chunk=None`, for a (per-device) vocabulary size."""
    return max(1, (FUSED_CHUNK_ELEMENTS if fused else CHUNK_ELEMENTS) // vocab_shard)


def chunked_jsd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    *,
    beta: float,
    temperature: float | jax.Array = 1.0,
    reduction: str = "sequence",
    chunk: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`masked_sum_count(generalized_jsd(student, teacher, ...), mask, reduction)`, `chunk`
    positions at a time.

    Args:
      student_logits, teacher_logits: [B, T, V], any float dtype. Only the student gets a gradient
        (of `sum`); donate the student logits to have it written over them.
      mask: [B, T], nonzero at the positions that count.
      beta, temperature: as in `generalized_jsd`.
      reduction: "sequence" or "token", as in `masked_sum_count`.
      chunk: positions (of B * T, per device) per step; default `default_chunk`: 2**19 / V.
      mesh: shard the vocabulary over its "tensor" axis and the batch over its other axes.

    Returns:
      (sum, count) float32 scalars.
    """
    _check(beta, temperature, reduction, chunk)
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"shapes differ: student {student_logits.shape}, teacher {teacher_logits.shape}, "
            f"mask {mask.shape}; expected [B, T, V], [B, T, V] and [B, T]"
        )
    batch, _, vocab = student_logits.shape
    batch_axes, axis, vocab_shard = _layout(mesh, batch, vocab)
    chunk = chunk or default_chunk(vocab_shard, fused=False)
    chunks = functools.partial(_logits_chunks, beta, axis, chunk)
    spec = P(batch_axes or None, None, axis)  # [B, T, V]
    loss = _loss_with_grads_in_forward(chunks, reduction, mesh, (spec,), (spec, P()), batch_axes)
    return loss((student_logits,), (teacher_logits, jnp.asarray(temperature, jnp.float32)), mask)


def fused_jsd_loss(
    student_hidden: jax.Array,
    student_unembed: jax.Array,
    teacher_hidden: jax.Array,
    teacher_unembed: jax.Array,
    mask: jax.Array,
    *,
    beta: float,
    temperature: float | jax.Array = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    reduction: str = "sequence",
    chunk: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`chunked_jsd_loss` of the logits `softcap(hidden @ unembed)`, never all materialized.

    Args:
      student_hidden: [B, T, Ds] final hidden states (after the final norm).
      student_unembed: [Ds, V] output projection. Gradients flow to these two only.
      teacher_hidden, teacher_unembed: [B, T, Dt], [Dt, V]; treated as constants.
      student_softcap, teacher_softcap: final-logit soft-cap `c * tanh(z / c)`, None for none.
      mask, beta, temperature, reduction, chunk, mesh: as in `chunked_jsd_loss`; with a mesh the
        unembeddings are sharded [D, V / tensor] and the hidden states replicated over "tensor".

    Returns:
      (sum, count) float32 scalars.
    """
    _check(beta, temperature, reduction, chunk)
    (batch, length, _), vocab = student_hidden.shape, student_unembed.shape[1]
    if (
        teacher_hidden.shape[:2] != (batch, length)
        or mask.shape != (batch, length)
        or student_unembed.shape[0] != student_hidden.shape[2]
        or teacher_unembed.shape != (teacher_hidden.shape[2], vocab)
    ):
        raise ValueError(
            f"shapes disagree: student {student_hidden.shape} @ {student_unembed.shape}, teacher "
            f"{teacher_hidden.shape} @ {teacher_unembed.shape}, mask {mask.shape}; expected "
            "[B, T, Ds] @ [Ds, V], [B, T, Dt] @ [Dt, V] and [B, T]"
        )
    batch_axes, axis, vocab_shard = _layout(mesh, batch, vocab)
    caps = (student_softcap, teacher_softcap)
    chunk = chunk or default_chunk(vocab_shard, fused=True)
    chunks = functools.partial(_fused_chunks, beta, axis, chunk, caps, batch_axes)
    hidden, unembed = P(batch_axes or None, None, None), P(None, axis)  # [B, T, D], [D, V]
    loss = _loss_with_grads_in_forward(
        chunks, reduction, mesh, (hidden, unembed), (hidden, unembed, P()), batch_axes
    )
    teacher = (teacher_hidden, teacher_unembed, jnp.asarray(temperature, jnp.float32))
    return loss((student_hidden, student_unembed), teacher, mask)
