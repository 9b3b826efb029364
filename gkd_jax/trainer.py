"""train_and_evaluate(config, workdir): supervised fine-tuning and GKD, readable top to bottom.

One step of GKD (Agarwal et al. 2024, Algorithm 1):
  1. with probability `lmbda` the completions are sampled from the current student (on-policy),
     otherwise they are the dataset's targets, or samples from the teacher with `seq_kd`;
  2. teacher and student score prompt + completion in one forward pass each;
  3. the student takes an AdamW step on the generalized JSD over the completion tokens.
Sampled tokens are data: no gradient flows through sampling. The teacher is frozen: it has no
optimizer state and its logits pass through `stop_gradient`.
"""

from __future__ import annotations

import functools
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gkd_jax import checkpoint, losses
from gkd_jax.config_checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.char_tokenizer import build_char_tokenizer, load_tokenizer
from gkd_jax.data.tasks import get_task
from gkd_jax.models import COMPUTE_DTYPES, DecoderConfig, build_decoder, functional
from gkd_jax.models.decoder import causal_mask, positions_from_mask
from gkd_jax.resources import resolve_path
from gkd_jax.sampling import SamplingConfig, make_sampler


# ---------------------------------------------------------------------------- the jitted step
def sequence_logits(apply_fn, params, prompt, prompt_mask, completion, completion_mask):
    """Logits that predict each completion token: [B, N, V] from prompt [B, P] + completion."""
    p, n = prompt.shape[1], completion.shape[1]
    tokens = jnp.concatenate([prompt, completion], axis=1)  # [B, P+N]
    valid = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
    logits, _ = apply_fn(params, tokens, positions_from_mask(valid), causal_mask(valid))
    return logits[:, p - 1 : p + n - 1]  # position t predicts token t + 1


def token_losses(config, apply_s, apply_t, params, teacher_params, mb):
    """Per-completion-token loss [b, N] for one micro-batch."""
    args = (mb["prompt"], mb["prompt_mask"], mb["completion"], mb["completion_mask"])
    s_logits = sequence_logits(apply_s, params, *args)  # [b, N, V]
    if config.objective == "sft":
        logp = jax.nn.log_softmax(s_logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, mb["completion"][..., None], axis=-1)[..., 0]
    t_logits = jax.lax.stop_gradient(sequence_logits(apply_t, teacher_params, *args))
    return losses.generalized_jsd(
        s_logits,
        t_logits / config.gkd.teacher_temperature,
        beta=config.gkd.beta,
        temperature=config.gkd.loss_temperature,
    )


def make_train_step(config, apply_s, apply_t, tx):
    """(state, teacher_params, batch [B, ...]) -> (state, metrics), gradient accumulation inside."""
    accum = config.grad_accum
    reduction = config.gkd.reduction if config.objective == "gkd" else config.sft_reduction

    def sum_count(params, teacher_params, mb):
        per_token = token_losses(config, apply_s, apply_t, params, teacher_params, mb)
        return losses.masked_sum_count(per_token, mb["completion_mask"], reduction)

    grad_fn = jax.value_and_grad(sum_count, has_aux=True)

    def step(state, teacher_params, batch):
        # Row r of micro-batch a is row r * accum + a: rows stay on the device that holds them.
        split = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), batch)

        def micro(a, carry):
            grads, total, count = carry
            mb = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, a, 1, False), split)
            (s, c), g = grad_fn(state["params"], teacher_params, mb)
            return jax.tree.map(jnp.add, grads, g), total + s, count + c

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        grads, total, count = jax.lax.fori_loop(0, accum, micro, (zeros, 0.0, 0.0))
        # (sum, count) pairs make accumulation exact: the mean's gradient is sum-grad / count.
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": losses.mean_from_sum_count(total, count),
            "grad_norm": optax.tree.norm(grads),
            "loss_tokens": jnp.sum(batch["completion_mask"]),
        }
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return jax.jit(step, donate_argnums=(0,))


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=o.warmup_steps,
        decay_steps=max(config.steps, o.warmup_steps + 1),
        end_value=o.learning_rate * o.final_lr_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
    )


# ---------------------------------------------------------------------------- models
def model_config(config_model: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**config_model.to_dict())


def obtain_model(spec, workdir: str, name: str, dtype, expected: DecoderConfig):
    """Load the model a spec names, checking it has the `expected` shape. With `checkpoint=""` it
    lives in WORKDIR/NAME/model and, when missing, is first trained there by the spec's recipe."""
    if spec.checkpoint:
        path = resolve_path(spec.checkpoint)
        if not checkpoint.has_model(path):
            raise FileNotFoundError(
                f"config.{name}.checkpoint: no model at {path}. Make one with `python -m "
                f"gkd_jax.train --config={spec.recipe or 'CONFIG'} --workdir=DIR` and pass "
                f"DIR/model, or set --config.{name}.checkpoint= to train it in the workdir."
            )
        return checkpoint.load_model(path, expected=expected, dtype=dtype)
    run_dir = os.path.join(workdir, name)
    path = os.path.join(run_dir, "model")
    if not checkpoint.has_model(path):
        if not spec.recipe:
            raise FileNotFoundError(f"config.{name}: no model at {path} and no recipe to make it")
        from gkd_jax.config_loading import load_config_file  # config files import this module

        log(f"[{name}] no model at {path}: training it with {spec.recipe}")
        train_and_evaluate(load_config_file(spec.recipe), run_dir)
    return checkpoint.load_model(path, expected=expected, dtype=dtype)


# ---------------------------------------------------------------------------- evaluation
def greedy_sampler(apply_fn, init_cache, tokenizer, config):
    """The evaluation decoder: greedy, up to max_new_tokens, stopping at EOS."""
    cfg = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=0.0,
        stop_ids=(tokenizer.eos_token_id,),
        pad_id=tokenizer.pad_token_id,
    )
    return make_sampler(apply_fn, init_cache, cfg)


def evaluate(sampler, params, tokenizer, eval_data, examples, task, config, mesh) -> dict:
    """Greedy decoding of the eval split; the task's metric on the decoded completions."""
    params = jax.device_put(params, NamedSharding(mesh, P()))
    rows = NamedSharding(mesh, P("data"))
    texts = []
    for batch in pipeline.in_order(eval_data, config.eval.batch_size):
        out = sampler(
            params,
            jax.device_put(batch["prompt"], rows),
            jax.device_put(batch["prompt_mask"], rows),
            jax.random.key(0),
        )
        tokens = np.asarray(out.tokens)[batch["valid"]]
        mask = np.asarray(out.mask)[batch["valid"]]
        texts += [
            tokenizer.decode(t[m], skip_special_tokens=True)
            for t, m in zip(tokens, mask, strict=True)
        ]
    predictions = [task.extract(t) for t in texts]
    score = task.metric(predictions, [e.answer for e in examples])
    samples = [(e.prompt, t) for e, t in zip(examples[:3], texts[:3], strict=True)]
    return {task.metric_name: score, "samples": samples}


# ---------------------------------------------------------------------------- the loop
def log(msg: str) -> None:
    print(msg, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per `config` into `workdir`; return the final evaluation (also in results.json)."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    task = get_task(config.task)
    tokenizer = load_or_build_tokenizer(config, workdir)
    validate_config(config, vocab_size=len(tokenizer))
    dtype = COMPUTE_DTYPES[config.dtype]

    # Data: fixed shapes, so each jitted function compiles once.
    train_ex = task.make_examples("train", config.data.train_examples, config.seed)
    eval_ex = task.make_examples("test", config.eval.num_examples, config.data.eval_seed)
    enc = functools.partial(
        pipeline.encode,
        tokenizer,
        max_prompt_len=config.data.max_prompt_len,
        max_target_len=config.max_new_tokens,
    )
    train_data = enc([e.prompt for e in train_ex], [e.target for e in train_ex])
    eval_data = enc([e.prompt for e in eval_ex], [e.target for e in eval_ex])

    # Models. The student starts from `init` (the SFT checkpoint) or from scratch.
    student_cfg = model_config(config.model)
    out_dir = os.path.join(workdir, "model")
    if checkpoint.has_model(out_dir):
        checkpoint.check_model_config(out_dir, student_cfg)
    teacher = None
    if config.objective == "gkd":
        teacher = obtain_model(
            config.teacher, workdir, "teacher", dtype, model_config(config.teacher.model)
        )
    if config.init.checkpoint or config.init.recipe:
        student = obtain_model(config.init, workdir, "init", dtype, student_cfg)
    else:
        student = build_decoder(student_cfg, seed=config.seed, dtype=dtype)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params, apply_s, init_cache_s = functional(student)
    teacher_params, apply_t, samplers = None, None, {}
    if teacher is not None:
        teacher_params, apply_t, init_cache_t = functional(teacher)
        teacher_params = jax.device_put(teacher_params, replicated)
    # One compiled greedy decoder per model: the student's serves its first and last evaluation.
    eval_args = (tokenizer, eval_data, eval_ex, task, config, mesh)
    eval_student = greedy_sampler(apply_s, init_cache_s, tokenizer, config)
    results: dict[str, Any] = {}
    if teacher is not None:
        t_sampler = greedy_sampler(apply_t, init_cache_t, tokenizer, config)
        results["teacher"] = evaluate(t_sampler, teacher_params, *eval_args)
    results["start"] = evaluate(eval_student, params, *eval_args)
    for name, r in results.items():
        log(f"[eval] {name}: {task.metric_name} {r[task.metric_name]:.4f}")

    tx = make_optimizer(config)
    state = jax.device_put(
        {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)},
        replicated,
    )
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.sampling.temperature,
        top_k=config.sampling.top_k,
        top_p=config.sampling.top_p,
        stop_ids=(tokenizer.eos_token_id,),
        pad_id=tokenizer.pad_token_id,
    )
    if teacher is not None:
        samplers["student"] = make_sampler(apply_s, init_cache_s, sampling)
        samplers["teacher"] = make_sampler(apply_t, init_cache_t, sampling)
    train_step = make_train_step(config, apply_s, apply_t, tx)

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    data_iter = pipeline.batches(train_data, config.batch_size, config.seed)
    base_key = jax.random.key(config.seed)
    t_start = t_window = time.time()
    on_policy_window = []
    with open(metrics_path, "a") as metrics_file:
        for step in range(config.steps):
            batch = next(data_iter)
            prompt = jax.device_put(batch["prompt"], rows)
            prompt_mask = jax.device_put(batch["prompt_mask"], rows)
            completion = jax.device_put(batch["target"], rows)
            completion_mask = jax.device_put(batch["target_mask"], rows)
            on_policy_frac = 0.0
            if config.objective == "gkd":
                completion, completion_mask, on_policy_frac = gkd_completions(
                    config, step, samplers, state["params"], teacher_params, base_key,
                    prompt, prompt_mask, completion, completion_mask,
                )  # fmt: skip
            state, m = train_step(
                state,
                teacher_params,
                dict(
                    prompt=prompt,
                    prompt_mask=prompt_mask,
                    completion=completion,
                    completion_mask=completion_mask,
                ),
            )
            on_policy_window.append(on_policy_frac)
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                now = time.time()
                # Throughput over the window since the last log line: the first window also
                # pays for compilation, later ones are the steady state.
                rate = len(on_policy_window) * config.batch_size / (now - t_window)
                elapsed, eta = now - t_start, (config.steps - step - 1) * config.batch_size / rate
                row = {
                    "step": step + 1,
                    **m,
                    "on_policy": float(np.mean(on_policy_window)),
                    "examples_per_s": rate,
                }
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                t_window, on_policy_window = now, []
                log(
                    f"step {step + 1:5d}/{config.steps} | loss {m['loss']:.4f} | "
                    f"grad {m['grad_norm']:.3f} | {rate:7.1f} ex/s | "
                    f"elapsed {fmt_time(elapsed)} | ETA {fmt_time(eta)}"
                )
    train_seconds = time.time() - t_start

    student = rebuild(student, state["params"])
    checkpoint.save_model(out_dir, student)
    results["final"] = evaluate(eval_student, state["params"], *eval_args)
    summary = {
        "task": config.task,
        "objective": config.objective,
        "metric": task.metric_name,
        "scores": {k: v[task.metric_name] for k, v in results.items()},
        "train_seconds": train_seconds,
        "examples_per_s": config.steps * config.batch_size / max(train_seconds, 1e-9),
        "steps": config.steps,
        "samples": results["final"]["samples"],
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(results_table(summary, config))
    return summary


def gkd_completions(
    config, step, samplers, params, teacher_params, base_key,
    prompt, prompt_mask, target, target_mask,
):  # fmt: skip
    """Pick this step's completions: student samples with probability lmbda, else data/teacher.

    `lmbda_mode="batch"` draws once per batch (the paper); `"example"` draws per row. The draws
    come from a generator seeded by (seed, step), so a restarted run repeats them.
    """
    g = config.gkd
    rng = np.random.default_rng([config.seed, step])
    key = jax.random.fold_in(base_key, step)
    b = prompt.shape[0]
    if g.lmbda_mode == "batch":
        on_policy = np.full((b,), rng.random() < g.lmbda)
    else:
        on_policy = rng.random(b) < g.lmbda
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
    nnx.update(model, jax.device_get(params))
    return model


def load_or_build_tokenizer(config, workdir: str):
    if config.tokenizer:
        return load_tokenizer(resolve_path(config.tokenizer))
    path = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return load_tokenizer(path)
    return build_char_tokenizer(path)


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
    head = f"Evaluation on {config.eval.num_examples} held-out {summary['task']} problems (greedy)"
    return head + "\n" + "\n".join(lines)
