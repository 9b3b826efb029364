"""train_and_evaluate(config, workdir): supervised fine-tuning and GKD, readable top to bottom.

One step of GKD (Agarwal et al. 2024, Algorithm 1):
  1. with probability `lmbda` the completions are sampled from the current student (on-policy),
     otherwise they are the dataset's targets, or samples from the teacher with `seq_kd`;
  2. teacher and student score prompt + completion in one forward pass each;
  3. the student takes an optimizer step (config.optim: AdamW, or the paper's Adafactor) on the
     generalized JSD over the completion tokens.
Sampled tokens are data: no gradient flows through sampling. The teacher is frozen: it has no
optimizer state and its logits pass through `stop_gradient`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from gkd_jax import checkpoint, distributed, loss_forms, losses, optim, preemption, sharding
from gkd_jax.config_checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.char_tokenizer import build_char_tokenizer, load_tokenizer
from gkd_jax.data.hf_tokenizer import check_same_vocabulary, load_hf_tokenizer, stop_ids
from gkd_jax.data.tasks import get_task
from gkd_jax.evaluation import describe_decoding, make_eval_decoder, task_scores
from gkd_jax.metrics_log import MetricsLog
from gkd_jax.models import COMPUTE_DTYPES, DecoderConfig, LMFunctions, build_decoder, functional_lm
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.lm import shared_vocab_logits
from gkd_jax.resources import is_hf_source, resolve_model_dir, resolve_path
from gkd_jax.sampling import SamplingConfig, make_sampler
from gkd_jax.schedules import lmbda_at

# ---------------------------------------------------------------------------- the jitted step
# The dropout masks' own stream of (seed, step, micro-batch), apart from the sampling keys.
DROPOUT_STREAM = 0x64726F70
# Evaluation's sampling keys (seed, batch), apart from training's (seed, step): batch i of an
# evaluation would otherwise draw the noise that step i's on-policy samples drew.
EVAL_STREAM = 0x6576616C


def training_key(base_key: jax.Array, step: int) -> jax.Array:
    """The on-policy (and SeqKD) sampling key of training step `step`; base_key = key(seed)."""
    return jax.random.fold_in(base_key, step)


def eval_key(base_key: jax.Array, batch: int) -> jax.Array:
    """The sampling key of evaluation batch `batch` (sampled evaluation); base_key = key(seed)."""
    return jax.random.fold_in(jax.random.fold_in(base_key, EVAL_STREAM), batch)


def dropout_kw(config, dropout_key) -> dict:
    """The student's training-mode keywords: none (an unchanged graph) without a key."""
    if dropout_key is None:
        return {}
    return dict(dropout_rate=config.dropout_rate, dropout_key=dropout_key)


def check_dropout(config, student: LMFunctions) -> None:
    if config.dropout_rate > 0 and "dropout_key" not in inspect.signature(student.score).parameters:
        raise ValueError(
            f"config.dropout_rate={config.dropout_rate}: the student's model family has no "
            "dropout (only T5 has); set config.dropout_rate=0"
        )


def token_losses(
    config, student: LMFunctions, teacher, params, teacher_params, mb, vocab: int,
    dropout_key=None,
):  # fmt: skip
    """Per-completion-token loss [b, N] for one micro-batch; GKD compares the first `vocab`
    logits of both models (their shared vocabulary). `dropout_key`: the student scores in
    training mode (config.dropout_rate)."""
    args = (mb["prompt"], mb["prompt_mask"], mb["completion"], mb["completion_mask"])
    s_logits = student.score(params, *args, **dropout_kw(config, dropout_key))  # [b, N, V]
    if config.objective == "sft":
        logp = jax.nn.log_softmax(s_logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, mb["completion"][..., None], axis=-1)[..., 0]
    t_logits = jax.lax.stop_gradient(teacher.score(teacher_params, *args))
    g = config.gkd
    divergence = losses.get_divergence(g.divergence, beta=g.beta if g.divergence == "jsd" else None)
    return divergence(
        shared_vocab_logits(s_logits, vocab),
        shared_vocab_logits(t_logits, vocab) / g.teacher_temperature,
        temperature=g.loss_temperature,
    )


def lean_sum_count(
    config, student, teacher, params, teacher_params, mb, vocab, mesh, dropout_key=None
):
    """(sum, count) of the GKD loss of one micro-batch by a memory-lean form (loss_forms.py):
    config.gkd.loss_impl "chunked" (from logits, a chunk of positions at a time) or "fused"
    (from hidden states and output heads: no [b, N, V] logits at all). `mesh`: the loss's
    (sharding.loss_mesh), vocabulary-parallel over its "tensor" axis."""
    g = config.gkd
    args = (mb["prompt"], mb["prompt_mask"], mb["completion"], mb["completion_mask"])
    drop_kw = dropout_kw(config, dropout_key)
    kw = dict(
        beta=losses.FIXED_BETAS.get(g.divergence, g.beta),
        temperature=g.loss_temperature,
        reduction=g.reduction,
        chunk=g.loss_chunk or None,
        mesh=mesh,
    )
    stop = jax.lax.stop_gradient
    if g.loss_impl == "chunked":
        s_logits = shared_vocab_logits(student.score(params, *args, **drop_kw), vocab)
        t_logits = shared_vocab_logits(stop(teacher.score(teacher_params, *args)), vocab)
        return loss_forms.chunked_jsd_loss(
            s_logits, t_logits / g.teacher_temperature, mb["completion_mask"], **kw
        )
    t_hidden = stop(teacher.hidden(teacher_params, *args))  # [b, N, Dt]
    if g.teacher_temperature != 1.0:
        # (h / tau) @ W = (h @ W) / tau; a soft-capped head would cap before dividing.
        t_hidden = t_hidden / jnp.asarray(g.teacher_temperature, t_hidden.dtype)
    return loss_forms.fused_jsd_loss(
        student.hidden(params, *args, **drop_kw),  # [b, N, Ds]
        student.unembedding(params)[:, :vocab],  # [Ds, V]
        t_hidden,
        stop(teacher.unembedding(teacher_params))[:, :vocab],  # [Dt, V]
        mb["completion_mask"],
        student_softcap=student.final_softcap,
        teacher_softcap=teacher.final_softcap,
        **kw,
    )


def check_loss_impl(config, student: LMFunctions, teacher: LMFunctions | None) -> None:
    """What config.gkd.loss_impl needs of the models, checked before anything compiles."""
    impl = config.gkd.loss_impl if config.objective == "gkd" else "full"
    if impl != "fused":
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
    reduction = config.gkd.reduction if config.objective == "gkd" else config.sft_reduction
    vocab = student.vocab_size if teacher is None else min(student.vocab_size, teacher.vocab_size)
    check_loss_impl(config, student, teacher)
    check_dropout(config, student)
    lean = config.objective == "gkd" and config.gkd.loss_impl != "full"
    loss_mesh = None
    if mesh is not None:
        # The models' forward passes pin their activations' rows (sharding.constrain_rows).
        student = sharding.models_on_mesh(student, mesh)
        teacher = None if teacher is None else sharding.models_on_mesh(teacher, mesh)
        if lean:
            loss_mesh = sharding.loss_mesh(mesh, vocab, config.batch_size // accum)

    def sum_count(params, teacher_params, mb, dropout_key=None):
        if lean:
            return lean_sum_count(
                config, student, teacher, params, teacher_params, mb, vocab, loss_mesh,
                dropout_key,
            )  # fmt: skip
        per_token = token_losses(
            config, student, teacher, params, teacher_params, mb, vocab, dropout_key
        )
        return losses.masked_sum_count(per_token, mb["completion_mask"], reduction)

    grad_fn = jax.value_and_grad(sum_count, has_aux=True)

    def step(state, teacher_params, batch):
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
            (s, c), g = grad_fn(state["params"], teacher_params, mb, key)
            return jax.tree.map(jnp.add, grads, g), total + s, count + c

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        grads, total, count = jax.lax.fori_loop(0, accum, micro, (zeros, 0.0, 0.0))
        # (sum, count) pairs make accumulation exact: the mean's gradient is sum-grad / count.
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        loss, grad_norm = losses.mean_from_sum_count(total, count), optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient would poison the parameters and Adam's moments for
        # good: such a step keeps both as they were (the step count still advances, so the
        # next step draws new data and samples); the loop counts these and gives up after
        # config.max_nonfinite_steps in a row.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_bad = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params = keep_if_bad(params, state["params"])
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

    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    whole = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_shardings, teacher_shardings or whole, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, whole),
        donate_argnums=(0,),
    )


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


def make_optimizer(config) -> optax.GradientTransformation:
    """config.optim -> optax (gkd_jax/optim.py: AdamW or Adafactor, cosine or linear schedule)."""
    return optim.make_optimizer(config)


# ---------------------------------------------------------------------------- models
def model_config(config_model: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**config_model.to_dict())


def source_shape(checkpoint_spec: str, config_model) -> DecoderConfig | None:
    """The decoder shape a config asks of a model source, or None where the source brings its
    own: a Hugging Face model, or our checkpoint of another family (a T5 an SFT stage wrote to
    WORKDIR/model), which `config.model`'s decoder fields do not describe."""
    if is_hf_source(checkpoint_spec):
        return None
    path = resolve_path(checkpoint_spec) if checkpoint_spec else ""
    if path and checkpoint.has_model(path):
        if not isinstance(checkpoint.read_model_config(path), DecoderConfig):
            return None
    return model_config(config_model)


def obtain_model(spec, workdir: str, name: str, dtype, expected=None, mesh: Mesh | None = None):
    """Load the model a spec names: a Hugging Face directory or hub id, or our checkpoint (whose
    shape must be `expected`, when given). With `checkpoint=""` it lives in WORKDIR/NAME/model
    and, when missing, is first trained there by the spec's recipe. With `mesh`, each parameter
    is read straight into its sharding (sharding.py)."""
    if is_hf_source(spec.checkpoint):
        log(f"[{name}] loading Hugging Face checkpoint {spec.checkpoint}")
        return load_pretrained(spec.checkpoint, dtype=dtype, mesh=mesh)
    if spec.checkpoint:
        path = resolve_path(spec.checkpoint)
        if not checkpoint.has_model(path):
            raise FileNotFoundError(
                f"config.{name}.checkpoint: no model at {path} (neither our checkpoint nor a "
                f"Hugging Face directory). Make one with `python -m gkd_jax.train --config="
                f"{spec.recipe or 'CONFIG'} --workdir=DIR` and pass DIR/model, or set "
                f"--config.{name}.checkpoint= to train it in the workdir."
            )
        return checkpoint.load_model(path, expected=expected, dtype=dtype, mesh=mesh)
    run_dir = os.path.join(workdir, name)
    path = os.path.join(run_dir, "model")
    if not checkpoint.has_model(path):
        if not spec.recipe:
            raise FileNotFoundError(f"config.{name}: no model at {path} and no recipe to make it")
        from gkd_jax.config_loading import load_config_file  # config files import this module

        log(f"[{name}] no model at {path}: training it with {spec.recipe}")
        train_and_evaluate(load_config_file(spec.recipe), run_dir)
    return checkpoint.load_model(path, expected=expected, dtype=dtype, mesh=mesh)


def shared_vocab_size(config, tokenizer, student, teacher) -> int:
    """The vocabulary the loss compares: both models' logits cut to the smaller table. Tables
    may differ only by padding rows past the tokenizer, and the tokenizers must agree."""
    n_tok, v_s = len(tokenizer), student.cfg.vocab_size
    v_t = v_s if teacher is None else teacher.cfg.vocab_size
    if min(v_s, v_t) < n_tok:
        # transformers adds tokens (e.g. a default <|endoftext|>) past the model's table; that is
        # harmless unless the data use them, which `check_token_ids` rejects.
        log(f"[vocab] the tokenizer has {n_tok} tokens, the model(s) {min(v_s, v_t)} logits")
    if teacher is None:
        return v_s
    source = config.teacher.checkpoint
    if is_hf_source(source):
        teacher_dir = resolve_model_dir(source)
        if os.path.exists(os.path.join(teacher_dir, "tokenizer_config.json")):
            teacher_tok = load_hf_tokenizer(teacher_dir)
            check_same_vocabulary(
                tokenizer, teacher_tok, config.tokenizer, source, limit=min(v_s, v_t)
            )
        elif v_s != v_t:
            raise ValueError(
                f"teacher ({v_t} logits) and student ({v_s}) differ in vocabulary size and "
                f"{teacher_dir} has no tokenizer to prove they share one"
            )
    elif v_s != v_t:
        raise ValueError(
            f"teacher ({v_t} logits) and student ({v_s}) vocabularies differ: they must share one"
        )
    if v_s != v_t:
        log(f"[vocab] teacher {v_t} / student {v_s} logits: comparing the first {min(v_s, v_t)}")
    return min(v_s, v_t)


def check_token_ids(data: dict[str, np.ndarray], vocab: int, name: str) -> None:
    """Every token id must index the (shared) vocabulary: an id past a model's embedding table
    would be silently clamped by the gather, not rejected."""
    for key in ("prompt", "completion"):
        rows = np.nonzero((data[key] >= vocab).any(axis=1))[0]
        if len(rows):
            raise ValueError(
                f"{len(rows)} {name} examples hold token ids >= {vocab} (the models' shared "
                f"vocabulary) in their {key}, first #{rows[0]}: the tokenizer has tokens the "
                "models have no embedding for"
            )


# ---------------------------------------------------------------------------- evaluation
def decode_split(
    sampler, params, data, batch_size, mesh, *, seed: int = 0, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Completions of every row by `sampler` (evaluation.make_eval_decoder: greedy, beam or
    sampled with key eval_key(key(seed), batch)): tokens [N, T] and mask [N, T] (numpy).
    `progress(done, total)` is called after each batch."""
    rows = sharding.batch_sharding(mesh)  # params stay as placed: no gather per evaluation
    mine = distributed.host_rows(batch_size, rows)  # every host holds the eval data
    tokens, masks = [], []
    total = len(data["prompt"])
    for i, batch in enumerate(pipeline.in_order(data, batch_size)):
        out = sampler(
            params,
            distributed.global_batch(batch["prompt"][mine], rows, batch_size),
            distributed.global_batch(batch["prompt_mask"][mine], rows, batch_size),
            eval_key(jax.random.key(seed), i),
        )
        if progress is not None:
            progress(min((i + 1) * batch_size, total), total)
        out_tokens, out_mask = distributed.to_host((out.tokens, out.mask))  # [B, T] each
        tokens.append(out_tokens[batch["valid"]])
        masks.append(out_mask[batch["valid"]])
    return np.concatenate(tokens), np.concatenate(masks)


def make_divergence_fn(config, student: LMFunctions, teacher: LMFunctions):
    """Jitted per-sequence mean generalized JSD (config beta) of given completions [B] ."""
    vocab = min(student.vocab_size, teacher.vocab_size)

    @jax.jit
    def divergence(params, teacher_params, prompt, prompt_mask, completion, completion_mask):
        mb = dict(
            prompt=prompt,
            prompt_mask=prompt_mask,
            completion=completion,
            completion_mask=completion_mask,
        )
        per_token = token_losses(config, student, teacher, params, teacher_params, mb, vocab)
        m = completion_mask.astype(jnp.float32)
        return jnp.sum(per_token * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

    return divergence


def evaluate(ev, params, who: str = "student") -> dict:
    """Decoding of the eval split (config.eval.decoding); the task's metric (and extra metrics)
    on the completions, or (no metric) the student's divergence from the teacher on them."""
    tokens, mask = decode_split(
        ev["samplers"][who], params, ev["data"], ev["config"].eval.batch_size, ev["mesh"]
    )
    tok, task, split = ev["tokenizer"], ev["task"], ev["split"]
    texts = [tok.decode(t[m], skip_special_tokens=True) for t, m in zip(tokens, mask, strict=True)]
    if task.metric is not None:
        scores = task_scores(task, texts, split.references)
    else:
        score = mean_divergence(
            ev["divergence"], params, ev["teacher_params"], ev["data"], tokens, mask,
            ev["config"].eval.batch_size, ev["mesh"],
        )  # fmt: skip
        scores = {task.metric_name: score}
    samples = [(p, t) for p, t in zip(split.prompts[:3], texts[:3], strict=True)]
    return {**scores, "samples": samples}


def mean_divergence(
    divergence, params, teacher_params, data, tokens, mask, batch_size, mesh
) -> float:
    """Mean over rows of `divergence` (make_divergence_fn) on completions tokens/mask [N, T]
    of the prompts in `data`: the student's on-policy divergence from the teacher."""
    per_seq = []
    data = dict(data, completion=tokens, completion_mask=mask)
    rows = sharding.batch_sharding(mesh)
    mine = distributed.host_rows(batch_size, rows)
    for batch in pipeline.in_order(data, batch_size):
        put = {k: distributed.global_batch(batch[k][mine], rows, batch_size) for k in data}
        d = divergence(
            params, teacher_params, put["prompt"], put["prompt_mask"], put["completion"],
            put["completion_mask"],
        )  # fmt: skip
        per_seq.append(distributed.to_host(d)[batch["valid"]])
    return float(np.mean(np.concatenate(per_seq)))


# ---------------------------------------------------------------------------- the loop
def log(msg: str) -> None:
    if distributed.is_main_process():  # every process runs the same loop: one copy of the log
        print(msg, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per `config` into `workdir`; return the final evaluation (also in results.json).

    Resumes from the latest train-state checkpoint in WORKDIR/checkpoints. On SIGTERM, or after
    `config.stop_after_steps`, saves one and raises `preemption.Preempted`."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    task = get_task(config.task)
    tokenizer, stops = load_or_build_tokenizer(config, workdir)
    validate_config(config, vocab_size=len(tokenizer))
    dtype = COMPUTE_DTYPES[config.dtype]

    # Models, loaded straight into their shardings on the mesh (gkd_jax/sharding.py). The
    # student starts from `init` (an SFT checkpoint) or from scratch.
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    init_shape = source_shape(config.init.checkpoint, config.model)
    out_dir = os.path.join(workdir, "model")
    if checkpoint.has_model(out_dir) and init_shape is not None:
        checkpoint.check_model_config(out_dir, init_shape)
    teacher = None
    if config.objective == "gkd":
        # .get: a Hugging Face teacher's source has no `model` fields
        expected = source_shape(config.teacher.checkpoint, config.teacher.get("model"))
        teacher = obtain_model(config.teacher, workdir, "teacher", dtype, expected, mesh)
    if config.init.checkpoint or config.init.recipe:
        student = obtain_model(config.init, workdir, "init", dtype, init_shape, mesh)
    else:
        cfg = model_config(config.model)
        student = sharding.shard_model(
            lambda: build_decoder(cfg, seed=config.seed, dtype=dtype), mesh
        )
    if checkpoint.has_model(out_dir) and init_shape is None:
        checkpoint.check_model_config(out_dir, student.cfg)
    vocab = shared_vocab_size(config, tokenizer, student, teacher)
    if task.metric is None and teacher is None:
        raise ValueError(f"task {task.name!r} is scored against a teacher: use objective='gkd'")

    # Data: fixed shapes, so each jitted function compiles once.
    train_split, eval_split = task.load(config, tokenizer, stops, log=log)
    pack = functools.partial(
        pipeline.pack,
        max_prompt_len=config.data.max_prompt_len,
        max_completion_len=config.max_new_tokens,
        pad_id=tokenizer.pad_token_id,
    )
    train_data = pack(train_split.prompt_ids, train_split.completion_ids)
    eval_data = pack(eval_split.prompt_ids, eval_split.completion_ids)
    check_token_ids(train_data, vocab, "training")
    check_token_ids(eval_data, vocab, "evaluation")

    rows = sharding.batch_sharding(mesh)
    params, student_fns = functional_lm(student)
    teacher_params, teacher_fns, teacher_shardings = None, None, None
    if teacher is not None:
        teacher_params, teacher_fns = functional_lm(teacher)
        teacher_shardings = sharding.tree_shardings(teacher_params, mesh)
        teacher_params = jax.device_put(teacher_params, teacher_shardings)  # no-op if loaded so
    check_loss_impl(config, student_fns, teacher_fns)  # before the first compilation
    # One compiled eval decoder (config.eval.decoding) per model: the student's serves its
    # first and last evaluation.
    eval_decoder = functools.partial(
        make_eval_decoder, config=config, stop_ids=stops, pad_id=tokenizer.pad_token_id,
        vocab_size=vocab,
    )  # fmt: skip
    ev = dict(
        config=config, task=task, tokenizer=tokenizer, split=eval_split, data=eval_data,
        mesh=mesh, teacher_params=teacher_params,
        samplers={"student": eval_decoder(student_fns.decoding)},
    )  # fmt: skip
    if task.metric is None:
        ev["divergence"] = make_divergence_fn(config, student_fns, teacher_fns)
    # Train state: fresh, or the latest checkpoint in WORKDIR/checkpoints (a resumed run).
    tx = make_optimizer(config)
    # The optimizer state is created in its shardings, next to the parameters already placed.
    state, state_shardings = sharding.init_train_state(params, tx, mesh)
    ckpts = checkpoint.TrainCheckpoints(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep
    )
    state, saved = ckpts.restore_latest(state, max_step=config.steps)
    start_step = int(state["step"])
    if saved:
        log(f"resuming from step {start_step} ({ckpts.path(start_step)})")

    # The first evaluation is stored in every checkpoint: a resumed run does not redo it.
    results: dict[str, Any] = saved.get("eval", {})
    if teacher is not None and task.metric is not None:
        ev["samplers"]["teacher"] = eval_decoder(teacher_fns.decoding)
        if "teacher" not in results:
            results["teacher"] = evaluate(ev, teacher_params, "teacher")
    if "start" not in results:
        results["start"] = evaluate(ev, params)
    for name, r in results.items():
        stored = " (stored in the checkpoint)" if saved else ""
        log(f"[eval] {name}: {task.metric_name} {r[task.metric_name]:.4f}{stored}")

    sampling = training_sampling(config, stops, tokenizer.pad_token_id, vocab)
    samplers = {}
    if teacher is not None:
        samplers["student"] = make_sampler(student_fns.decoding, sampling, rows=rows)
        samplers["teacher"] = make_sampler(teacher_fns.decoding, sampling, rows=rows)
    train_step = make_train_step(
        config, student_fns, teacher_fns, tx, mesh=mesh, state_shardings=state_shardings,
        teacher_shardings=teacher_shardings,
    )  # fmt: skip

    # The data position, the sampling key and the lmbda draws are functions of (seed, step):
    # a run resumed at step k sees exactly what an uninterrupted one sees from step k on.
    # Each host gathers only the rows its devices hold; the global arrays are built from them.
    mine = distributed.host_rows(config.batch_size, rows)
    data_iter = pipeline.batches(
        train_data, config.batch_size, config.seed, start=start_step, rows=mine
    )
    base_key = jax.random.key(config.seed)
    skipped, nonfinite_run = saved.get("skipped_steps", 0), saved.get("nonfinite_run", 0)
    out_of_vocab = saved.get("out_of_vocab_ids", 0)  # completion ids past the vocabulary, so far

    def meta() -> dict:  # what a checkpoint keeps besides the train state
        return {
            "eval": results,
            "skipped_steps": skipped,
            "nonfinite_run": nonfinite_run,
            "out_of_vocab_ids": out_of_vocab,
        }

    t_start = t_window = time.time()
    on_policy_window = []
    # Drops rows a previous run logged after start_step. Process 0 writes for all.
    metrics = MetricsLog(workdir, start_step, enabled=distributed.is_main_process())
    if not saved:
        metrics.scalars(0, eval_scalars(results, task.metric_name))
    # Saves are asynchronous; leaving this block waits for the one in flight.
    with ckpts, preemption.sigterm_flag() as sigterm:
        for step in range(start_step, config.steps):
            batch = {
                k: distributed.global_batch(v, rows, config.batch_size)
                for k, v in next(data_iter).items()
            }
            prompt, prompt_mask = batch["prompt"], batch["prompt_mask"]
            completion, completion_mask = batch["completion"], batch["completion_mask"]
            on_policy_frac = 0.0
            if config.objective == "gkd":
                completion, completion_mask, on_policy_frac = gkd_completions(
                    config, step, samplers, state["params"], teacher_params, base_key,
                    prompt, prompt_mask, completion, completion_mask,
                )  # fmt: skip
            batch = dict(
                prompt=prompt,
                prompt_mask=prompt_mask,
                completion=completion,
                completion_mask=completion_mask,
            )
            # The step is compiled for rows over data x fsdp: a no-op for rows placed so.
            state, m = train_step(state, teacher_params, jax.device_put(batch, rows))
            done = step + 1
            on_policy_window.append(on_policy_frac)
            # One read per step: the next step samples from these parameters anyway.
            nonfinite, step_oov = jax.device_get((m["nonfinite"], m["out_of_vocab"]))
            nonfinite_run = nonfinite_run + 1 if float(nonfinite) else 0
            out_of_vocab += int(step_oov)
            if step_oov:
                log(
                    f"WARNING: step {done}: {int(step_oov)} completion token ids outside the "
                    f"shared vocabulary [0, {vocab}) were trained on ({out_of_vocab} so far)"
                )
            skipped += int(nonfinite_run > 0)
            too_many_nonfinite = nonfinite_run >= config.max_nonfinite_steps
            if done % config.log_every == 0 or done == config.steps or too_many_nonfinite:
                m = {k: float(v) for k, v in jax.device_get(m).items() if k != "out_of_vocab"}
                now = time.time()
                # Throughput over the window since the last log line: the first window also
                # pays for compilation, later ones are the steady state.
                rate = len(on_policy_window) * config.batch_size / (now - t_window)
                elapsed, eta = now - t_start, (config.steps - done) * config.batch_size / rate
                metrics.write(
                    {
                        "step": done,
                        **m,
                        "skipped_steps": skipped,
                        "out_of_vocab_ids": out_of_vocab,
                        "on_policy": float(np.mean(on_policy_window)),
                        "examples_per_s": rate,
                    }
                )
                t_window, on_policy_window = now, []
                log(
                    f"step {done:5d}/{config.steps} | loss {m['loss']:.4f} | "
                    f"grad {m['grad_norm']:.3f} | {rate:7.1f} ex/s | "
                    f"elapsed {fmt_time(elapsed)} | ETA {fmt_time(eta)}"
                )
            if too_many_nonfinite:
                ckpts.wait()
                raise FloatingPointError(nonfinite_message(config, done, ckpts))
            # Saving is collective: all processes stop at the step where any got SIGTERM.
            if distributed.any_process(sigterm()):
                ckpts.save(done, state, meta())
                raise preemption.Preempted(done)
            stop_here = config.stop_after_steps and done - start_step == config.stop_after_steps
            if stop_here and done < config.steps:
                ckpts.save(done, state, meta())
                reason = f"stopped (config.stop_after_steps={config.stop_after_steps})"
                raise preemption.Preempted(done, reason)
            # Only a state that is updating normally is saved: in a run of non-finite steps,
            # the last good checkpoint must survive the rotation to `checkpoint.keep`.
            every = config.checkpoint.every_steps
            if every and done % every == 0 and done < config.steps and not nonfinite_run:
                ckpts.save(done, state, meta())
            every = config.eval.every_steps
            if every and done % every == 0 and done < config.steps and not nonfinite_run:
                score = evaluate(ev, state["params"])[task.metric_name]
                log(f"[eval] step {done}: {task.metric_name} {score:.4f}")
                metrics.scalars(done, {f"eval/{task.metric_name}": score})
                keep_if_best(student, state["params"], done, score, task, workdir)
        # The end state too: a crash in the export or the evaluation below resumes here.
        ckpts.save(config.steps, state, meta())
    train_seconds = time.time() - t_start

    student = rebuild(student, state["params"])
    checkpoint.save_model(out_dir, student)
    if config.export.hf and distributed.is_main_process():
        hf_dir = save_pretrained(
            student, os.path.join(workdir, "hf_model"), tokenizer=tokenizer, stop_ids=stops,
            dtype=config.export.dtype,
        )  # fmt: skip
        log(f"[export] Hugging Face model -> {hf_dir}")
    results["final"] = evaluate(ev, state["params"])
    metrics.scalars(config.steps, eval_scalars({"final": results["final"]}, task.metric_name))
    if config.eval.every_steps:
        final_score = results["final"][task.metric_name]
        keep_if_best(student, state["params"], config.steps, final_score, task, workdir)
    summary = {
        "task": config.task,
        "objective": config.objective,
        "metric": task.metric_name,
        "scores": {k: v[task.metric_name] for k, v in results.items()},
        "train_seconds": train_seconds,
        "examples_per_s": (config.steps - start_step)
        * config.batch_size
        / max(train_seconds, 1e-9),
        "steps": config.steps,
        "skipped_steps": skipped,
        "samples": results["final"]["samples"],
    }
    if distributed.is_main_process():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
    log(results_table(summary, config))
    return summary


def keep_if_best(student, params, step: int, score: float, task, workdir: str) -> None:
    """WORKDIR/best_model: the student at its best periodic evaluation so far (the train-state
    checkpoints rotate to the last few; this one survives them). Its score and step travel in
    its model_config.json, so a resumed run compares against it."""
    path = os.path.join(workdir, "best_model")
    if checkpoint.has_model(path):
        with open(os.path.join(path, checkpoint.CONFIG_FILE)) as f:
            best = json.load(f)["best"]
        sign = 1 if task.higher_is_better else -1
        if sign * score <= sign * best[task.metric_name]:
            return
    checkpoint.save_model(
        path, rebuild(student, params), extra={"best": {"step": step, task.metric_name: score}}
    )
    log(f"[eval] best {task.metric_name} so far: {score:.4f} at step {step} -> {path}")


def eval_scalars(results: dict[str, dict], metric: str) -> dict[str, float]:
    """TensorBoard tags: the student's score is eval/METRIC (at step 0 and at the last step),
    the teacher's eval/teacher_METRIC."""
    prefix = {"teacher": "teacher_"}
    return {f"eval/{prefix.get(name, '')}{metric}": r[metric] for name, r in results.items()}


def nonfinite_message(config, step: int, ckpts: checkpoint.TrainCheckpoints) -> str:
    n, last = config.max_nonfinite_steps, ckpts.latest_step()
    where = (
        f"the last good checkpoint is {ckpts.path(last)} (step {last}), kept"
        if last is not None
        else f"no checkpoint was saved before (config.checkpoint.every_steps="
        f"{config.checkpoint.every_steps})"
    )
    return (
        f"step {step}: the loss or gradient norm was not finite for {n} steps in a row "
        f"(config.max_nonfinite_steps={n}); their updates were skipped and the run stopped. "
        f"{where}. Lower optim.learning_rate or optim.grad_clip, or check the data, then rerun "
        f"the same command to resume from it (delete {ckpts.directory} to start over)."
    )


def gkd_completions(
    config, step, samplers, params, teacher_params, base_key,
    prompt, prompt_mask, target, target_mask,
):  # fmt: skip
    """Pick this step's completions: student samples with probability lmbda, else data/teacher.

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
        target, target_mask = t_out.tokens, t_out.mask
    if not on_policy.any():
        return target, target_mask, 0.0
    s_out = samplers["student"](params, prompt, prompt_mask, key)
    if on_policy.all():
        return s_out.tokens, s_out.mask, 1.0
    pick = jax.device_put(on_policy[:, None], target.sharding)
    return (
        jnp.where(pick, s_out.tokens, target),
        jnp.where(pick, s_out.mask, target_mask),
        float(on_policy.mean()),
    )


def rebuild(model, params):
    nnx.update(model, distributed.to_host(params))  # sharded over hosts: gathered
    return model


def load_or_build_tokenizer(config, workdir: str):
    """(tokenizer, stop ids): `config.tokenizer` names a Hugging Face tokenizer directory (or hub
    id); empty builds the task's character tokenizer in the workdir."""
    if config.tokenizer:
        source = config.tokenizer
        source = resolve_path(source) if source.startswith("builtin:") else source
        tokenizer = load_hf_tokenizer(source)
        dirs = [resolve_model_dir(source)]
        if is_hf_source(config.init.checkpoint):
            dirs.append(resolve_model_dir(config.init.checkpoint))
        stops = stop_ids(tokenizer, *dirs)
        # A copy beside the checkpoints, so `python -m gkd_jax.export` finds it with its stops.
        copy = os.path.join(workdir, "tokenizer")
        if distributed.is_main_process():
            tokenizer.save_pretrained(copy)
            with open(os.path.join(copy, "generation_config.json"), "w") as f:
                json.dump({"eos_token_id": list(stops)}, f)
        return tokenizer, stops
    path = os.path.join(workdir, "tokenizer")
    if distributed.is_main_process() and not os.path.exists(os.path.join(path, "tokenizer.json")):
        build_char_tokenizer(path)
    distributed.barrier("tokenizer")  # the others read what process 0 wrote
    tokenizer = load_tokenizer(path)
    return tokenizer, (tokenizer.eos_token_id,)


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def results_table(summary: dict[str, Any], config) -> str:
    names = {"teacher": "teacher", "start": "student (start)", "final": "student (after)"}
    if summary["objective"] == "sft":
        names = {"start": "model (init)", "final": "model (after SFT)"}
    metric = summary["metric"]
    lines = [f"| model | {metric} |", "|---|---|"]
    for key, label in names.items():
        if key in summary["scores"]:
            lines.append(f"| {label} | {summary['scores'][key]:.4f} |")
    head = (
        f"Evaluation on {config.eval.num_examples} held-out {summary['task']} problems "
        f"({describe_decoding(config)})"
    )
    return head + "\n" + "\n".join(lines)
