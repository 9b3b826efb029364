"""One GKD training step (Agarwal et al. 2024, Algorithm 1), in the order the loop runs it:

  1. `gkd_completions`: with probability `lmbda` the completions are sampled from the current
     student (on-policy), otherwise they are the dataset's, or samples from the teacher with
     `seq_kd`;
  2. `Objective.sum_count`: teacher and student score prompt + completion in one forward pass
     each, and the loss over the completion tokens (the generalized JSD of config.gkd, or SFT's
     cross-entropy) comes out as a (sum, count) pair;
  3. `make_train_step`, jitted: the student's gradient over `grad_accum` micro-batches, one
     optimizer update (config.optim), and a step whose loss or gradient is not finite skipped.
Sampled tokens are data: no gradient flows through sampling. The teacher is frozen: it has no
optimizer state and its logits pass through `stop_gradient`. Every random draw is a function of
(config.seed, step), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gkd_jax.decoding.sampling import SamplingConfig
from gkd_jax.models import lora
from gkd_jax.models.lm import LMFunctions, shared_vocab_logits
from gkd_jax.objectives import loss_forms, losses, sparse_teacher
from gkd_jax.objectives.policy_gradient import SAMPLED_DIVERGENCES, policy_gradient
from gkd_jax.parallel import sharding
from gkd_jax.training.schedules import lmbda_at

# The dropout masks' own stream of (seed, step, micro-batch), apart from the sampling keys.
DROPOUT_STREAM = 0x64726F70
# A batch's teacher summary read from a teacher cache (teacher_cache_store.py; sparse_teacher.py):
# ids [B, N, K] int32, log-probs [B, N, K] and the log tail mass [B, N]. With them in the batch,
# Objective scores the sparse loss without running the teacher.
TEACHER_KEYS = ("teacher_ids", "teacher_logp", "teacher_log_tail")


# ---------------------------------------------------------------------------- 1. completions
def training_key(base_key: jax.Array, step: int) -> jax.Array:
    """The on-policy (and SeqKD) sampling key of training step `step`; base_key = key(seed)."""
    return jax.random.fold_in(base_key, step)


def training_sampling(config, stops, pad_id: int, vocab: int) -> SamplingConfig:
    """On-policy (and SeqKD) sampling as config.sampling sets it, over the shared vocabulary."""
    return SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.sampling.temperature,
        top_k=config.sampling.top_k,
        top_p=config.sampling.top_p,
        stop_ids=stops,
        pad_id=pad_id,
        vocab_size=vocab,
    )


def gkd_completions(
    config, step, samplers, params, teacher_params, base_key,
    prompt, prompt_mask, completion, completion_mask,
):  # fmt: skip
    """This step's completions [B, N] and mask, and the on-policy fraction: student samples
    (samplers["student"]) with probability lmbda, else the given (dataset) completions, or with
    seq_kd the teacher's samples (samplers["teacher"]).

    `lmbda_mode="batch"` draws once per batch (the paper); `"example"` draws per row. The draws
    come from a generator seeded by (seed, step), so a restarted run repeats them.
    """
    g = config.gkd
    lmbda = lmbda_at(
        step,
        config.steps,
        kind=g.lmbda_schedule,
        lmbda=None if g.lmbda_schedule == "imitkd" else g.lmbda,
    )
    rng = np.random.default_rng([config.seed, step])
    key = training_key(base_key, step)
    b = prompt.shape[0]
    if g.lmbda_mode == "batch":
        on_policy = np.full((b,), rng.random() < lmbda)
    else:
        on_policy = rng.random(b) < lmbda
    if g.seq_kd and not on_policy.all():
        t_out = samplers["teacher"](teacher_params, prompt, prompt_mask, jax.random.fold_in(key, 1))
        completion, completion_mask = t_out.tokens, t_out.mask
    if not on_policy.any():
        return completion, completion_mask, 0.0
    s_out = samplers["student"](params, prompt, prompt_mask, key)
    if on_policy.all():
        return s_out.tokens, s_out.mask, 1.0
    pick = jax.device_put(on_policy[:, None], completion.sharding)
    return (
        jnp.where(pick, s_out.tokens, completion),
        jnp.where(pick, s_out.mask, completion_mask),
        float(on_policy.mean()),
    )


# ---------------------------------------------------------------------------- 2. the loss
def check_dropout(config, student: LMFunctions) -> None:
    if config.dropout_rate > 0 and "dropout_key" not in inspect.signature(student.score).parameters:
        raise ValueError(
            f"config.dropout_rate={config.dropout_rate}: the student's model family has no "
            "dropout (only T5 has); set config.dropout_rate=0"
        )


# How the GKD loss is computed (config.gkd.loss_impl): "full" from both models' [B, N, V] logits,
# or a memory-lean form (loss_forms.py), which are generalized JSDs and so take the divergences
# that are one; "auto" picks (resolved_loss_impl).
LOSS_IMPLS = ("auto", "full", "chunked", "fused")
LOSS_FORM_DIVERGENCES = ("jsd", "fkl", "rkl")


def resolved_loss_impl(config) -> str:
    """config.gkd.loss_impl, with "auto" resolved: "chunked" wherever a lean form applies (a GKD
    objective on jsd / fkl / rkl from the full teacher, trained by the GKD step, not by policy
    gradient), else "full". Chunked was as fast as full on the arith pair (V = 99) and faster
    on a 152k vocabulary, and it never holds a [B, N, V] gradient beside both models' logits
    (docs/guides/memory.md); "fused" needs hidden states from the model family, so it stays
    opt-in."""
    g = config.gkd
    if config.objective != "gkd":
        return "full"
    if g.loss_impl != "auto":
        return g.loss_impl
    lean = (
        g.divergence in LOSS_FORM_DIVERGENCES
        and not g.teacher_top_k
        and not g.teacher_cache
        and not policy_gradient(config)
    )
    return "chunked" if lean else "full"


def check_loss_impl(config, student: LMFunctions, teacher: LMFunctions | None) -> None:
    """What config.gkd.loss_impl needs of the models, checked before anything compiles."""
    if resolved_loss_impl(config) != "fused":
        return
    for name, fns in (("student", student), ("teacher", teacher)):
        if fns.hidden is None or fns.unembedding is None:
            raise ValueError(
                f"config.gkd.loss_impl='fused': the {name}'s model family gives no hidden "
                "states / unembedding (LMFunctions.hidden); use loss_impl='chunked'"
            )
    if teacher.final_softcap is not None and config.gkd.teacher_temperature != 1.0:
        raise ValueError(
            "config.gkd.loss_impl='fused' with a soft-capped teacher head (final_softcap) cannot "
            "apply config.gkd.teacher_temperature after the cap; use loss_impl='chunked'"
        )


def score_args(batch) -> tuple:
    """LMFunctions.score's (prompt, prompt_mask, completion, completion_mask) from a batch."""
    return batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"]


class Objective:
    """The training loss of config.objective, built once from what does not change during a
    run: the config, the student's and teacher's LMFunctions, their shared vocabulary (GKD
    compares the first `vocab` logits of both) and, on a mesh, the models' and loss's placement.

    "gkd": config.gkd.divergence between teacher and student per completion token, from [B, N, V]
    logits ("full") or by a memory-lean form (loss_forms.py: "chunked", "fused"), or with
    gkd.teacher_top_k = K from the teacher's top-K + tail (sparse_teacher.py): taken from the
    live teacher's logits, or from the batch's TEACHER_KEYS (a teacher cache; no teacher then);
    "sft": the student's cross-entropy on the completions. Batches are dicts of prompt,
    prompt_mask, completion, completion_mask; a `dropout_key` scores the student in training
    mode."""

    def __init__(self, config, student: LMFunctions, teacher: LMFunctions | None, *, mesh=None):
        check_loss_impl(config, student, teacher)
        check_dropout(config, student)
        self.config = config
        self.vocab = (
            student.vocab_size if teacher is None else min(student.vocab_size, teacher.vocab_size)
        )
        g = config.gkd
        self.reduction = g.reduction if config.objective == "gkd" else config.sft_reduction
        self.loss_impl = resolved_loss_impl(config)
        self.memory_lean = self.loss_impl != "full"
        self.top_k = g.teacher_top_k if config.objective == "gkd" else 0
        if self.top_k > self.vocab:
            raise ValueError(
                f"config.gkd.teacher_top_k={self.top_k} exceeds the shared vocabulary "
                f"({self.vocab}): use K <= {self.vocab}, or 0 for the full teacher"
            )
        self.loss_mesh: Mesh | None = None
        if mesh is not None:
            # The models' forward passes pin their activations' rows (sharding.constrain_rows).
            student = sharding.models_on_mesh(student, mesh)
            teacher = None if teacher is None else sharding.models_on_mesh(teacher, mesh)
            if self.memory_lean:
                rows = config.batch_size // config.grad_accum
                self.loss_mesh = sharding.loss_mesh(mesh, self.vocab, rows)
        self.student, self.teacher = student, teacher

    def _dropout_kw(self, dropout_key) -> dict:
        """The student's training-mode keywords: none (an unchanged graph) without a key."""
        if dropout_key is None:
            return {}
        return dict(dropout_rate=self.config.dropout_rate, dropout_key=dropout_key)

    def sum_count(self, params, teacher_params, batch, dropout_key=None):
        """(sum, count) of the loss over `batch`'s completion tokens (losses.masked_sum_count):
        sums add across micro-batches and devices, so their mean is one big batch's."""
        if self.memory_lean:
            return self.memory_lean_sum_count(params, teacher_params, batch, dropout_key)
        per_token = self.token_losses(params, teacher_params, batch, dropout_key)
        return losses.masked_sum_count(per_token, batch["completion_mask"], self.reduction)

    def token_losses(self, params, teacher_params, batch, dropout_key=None):
        """The loss of each completion token [B, N] (masked-out positions included)."""
        config = self.config
        args = score_args(batch)
        s_logits = self.student.score(params, *args, **self._dropout_kw(dropout_key))  # [B, N, V]
        if config.objective == "sft":
            logp = jax.nn.log_softmax(s_logits.astype(jnp.float32), axis=-1)
            return -jnp.take_along_axis(logp, batch["completion"][..., None], axis=-1)[..., 0]
        if TEACHER_KEYS[0] in batch:  # the teacher's top-K + tail, cached
            return self.sparse_divergence(s_logits, tuple(batch[k] for k in TEACHER_KEYS))
        t_logits = jax.lax.stop_gradient(self.teacher.score(teacher_params, *args))
        return self.divergence(s_logits, t_logits)

    def teacher_top_k(self, t_logits):
        """The teacher's summary (ids [..., K], log-probs [..., K], log tail [...]) of its
        logits [..., V*] at the loss's temperatures, as the sparse loss and the cache take it."""
        g = self.config.gkd
        return sparse_teacher.top_k_log_probs(
            shared_vocab_logits(t_logits, self.vocab) / g.teacher_temperature,
            self.top_k,
            temperature=g.loss_temperature,
        )

    def sparse_divergence(self, s_logits, summary):
        """config.gkd's divergence per position [B, N] between the student's logits and a
        teacher summary (`teacher_top_k`'s, or a cache's), on the K + 1 bins."""
        g = self.config.gkd
        name = "rkl" if g.divergence in SAMPLED_DIVERGENCES else g.divergence
        return sparse_teacher.sparse_divergence(
            name,
            shared_vocab_logits(s_logits, self.vocab),
            *summary,
            beta=g.beta if name == "jsd" else None,
            temperature=g.loss_temperature,
        )

    def divergence(self, s_logits, t_logits):
        """config.gkd's divergence per position [B, N] from both models' logits [B, N, V*]:
        "sampled_rkl" (trained by policy gradient, rl_step.py) gives its expectation, "rkl".
        With gkd.teacher_top_k the teacher's logits are cut to their top-K + tail first."""
        if self.top_k:
            return self.sparse_divergence(s_logits, self.teacher_top_k(t_logits))
        g, vocab = self.config.gkd, self.vocab
        name = "rkl" if g.divergence in SAMPLED_DIVERGENCES else g.divergence
        beta = g.beta if name == "jsd" else None
        divergence = losses.get_divergence(name, beta=beta)
        return divergence(
            shared_vocab_logits(s_logits, vocab),
            shared_vocab_logits(t_logits, vocab) / g.teacher_temperature,
            temperature=g.loss_temperature,
        )

    def memory_lean_sum_count(self, params, teacher_params, batch, dropout_key=None):
        """`sum_count` by config.gkd.loss_impl "chunked" (from logits, a chunk of positions at a
        time) or "fused" (from hidden states and output heads: no [B, N, V] logits at all),
        vocabulary-parallel over the loss mesh's "tensor" axis (sharding.loss_mesh)."""
        g, vocab = self.config.gkd, self.vocab
        student, teacher = self.student, self.teacher
        args = score_args(batch)
        drop_kw = self._dropout_kw(dropout_key)
        kw = dict(
            beta=losses.FIXED_BETAS.get(g.divergence, g.beta),
            temperature=g.loss_temperature,
            reduction=g.reduction,
            chunk=g.loss_chunk or None,
            mesh=self.loss_mesh,
        )
        stop = jax.lax.stop_gradient
        if self.loss_impl == "chunked":
            s_logits = shared_vocab_logits(student.score(params, *args, **drop_kw), vocab)
            t_logits = shared_vocab_logits(stop(teacher.score(teacher_params, *args)), vocab)
            return loss_forms.chunked_jsd_loss(
                s_logits, t_logits / g.teacher_temperature, batch["completion_mask"], **kw
            )
        t_hidden = stop(teacher.hidden(teacher_params, *args))  # [B, N, Dt]
        if g.teacher_temperature != 1.0:
            # (h / tau) @ W = (h @ W) / tau; a soft-capped head would cap before dividing.
            t_hidden = t_hidden / jnp.asarray(g.teacher_temperature, t_hidden.dtype)
        return loss_forms.fused_jsd_loss(
            student.hidden(params, *args, **drop_kw),  # [B, N, Ds]
            student.unembedding(params)[:, :vocab],  # [Ds, V]
            t_hidden,
            stop(teacher.unembedding(teacher_params))[:, :vocab],  # [Dt, V]
            batch["completion_mask"],
            student_softcap=student.final_softcap,
            teacher_softcap=teacher.final_softcap,
            **kw,
        )


# ---------------------------------------------------------------------------- 3. the update
def update(tx, state, grads, loss, batch, vocab: int):
    """(new state, metrics): one optimizer step with the step's gradient and loss, skipped
    (params and optimizer state kept) when either is not finite. `grads` are those of the
    trainable parameters (lora.split_trainable: a LoRA student's adapters, else all); the
    frozen rest passes through unchanged."""
    trainable, frozen = lora.split_trainable(state["params"])
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    params = optax.apply_updates(trainable, updates)
    # A non-finite loss or gradient would poison the parameters and Adam's moments for
    # good: such a step keeps both as they were (the step count still advances, so the
    # next step draws new data and samples); the loop counts these and gives up after
    # config.max_nonfinite_steps in a row. The new values keep the old ones' dtypes: with
    # bfloat16 master weights the float32 gradient (a sum over micro-batches / a float32
    # count) would otherwise turn Adam's first moment float32 after step 1, so the state
    # would change dtype (a second compile, more memory than planned) and a checkpoint,
    # restored into the start's dtypes, would not resume bit for bit.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_bad(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o).astype(o.dtype), new, old)

    params = lora.join(keep_if_bad(params, trainable), frozen)
    opt_state = keep_if_bad(opt_state, state["opt_state"])
    completion = batch["completion"]
    outside = (completion < 0) | (completion >= vocab)  # no logit to score: a sampler bug
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "loss_tokens": jnp.sum(batch["completion_mask"]),
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        "out_of_vocab": jnp.sum(outside & batch["completion_mask"].astype(bool)),
    }
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def make_train_step(
    config,
    student: LMFunctions,
    teacher: LMFunctions | None,
    tx,
    *,
    mesh: Mesh | None = None,
    state_shardings=None,
    teacher_shardings=None,
):
    """(state, teacher_params, batch [B, ...]) -> (state, metrics), gradient accumulation inside.
    metrics["out_of_vocab"]: completion tokens (masked in) outside the shared vocabulary.

    With `mesh` (sharding.make_mesh), the step is compiled for that placement: the state in
    `state_shardings` (in and out, donated), the teacher in `teacher_shardings`, batch rows over
    ("data", "fsdp"); without, jit follows its arguments' shardings."""
    accum = config.grad_accum
    objective = Objective(config, student, teacher, mesh=mesh)
    vocab = objective.vocab

    def step(state, teacher_params, batch):
        # The gradient of the trainable parameters only (a LoRA student's adapters: the frozen
        # base gets none, and no full-size gradient is ever formed for it).
        trainable, frozen = lora.split_trainable(state["params"])
        grad_fn = jax.value_and_grad(lora.on_trainable(objective.sum_count, frozen), has_aux=True)
        # Row r of micro-batch a is row r * accum + a: rows stay on the device that holds them.
        split = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), batch)
        step_key = None
        if config.dropout_rate > 0:  # masks of (seed, step): a resumed run draws the same
            # "rbg": each mask is one XLA RngBitGenerator op, where threefry unrolls into
            # hundreds (the step compiled ~2.5x slower with it, measured on CPU).
            seed_key = jax.random.key(config.seed, impl="rbg")
            step_key = jax.random.fold_in(
                jax.random.fold_in(seed_key, DROPOUT_STREAM), state["step"]
            )

        def micro(a, carry):
            grads, total, count = carry
            mb = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, a, 1, False), split)
            key = None if step_key is None else jax.random.fold_in(step_key, a)
            (s, c), g = grad_fn(trainable, teacher_params, mb, key)
            return jax.tree.map(jnp.add, grads, g), total + s, count + c

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grads, total, count = jax.lax.fori_loop(0, accum, micro, (zeros, 0.0, 0.0))
        # (sum, count) pairs make accumulation exact: the mean's gradient is sum-grad / count.
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        loss = losses.mean_from_sum_count(total, count)
        return update(tx, state, grads, loss, batch, vocab)

    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    whole = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_shardings, teacher_shardings or whole, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, whole),
        donate_argnums=(0,),
    )
