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

from gkd_jax import checkpoint, losses, optim, preemption
from gkd_jax.config_checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.char_tokenizer import build_char_tokenizer, load_tokenizer
from gkd_jax.data.hf_tokenizer import check_same_vocabulary, load_hf_tokenizer, stop_ids
from gkd_jax.data.tasks import get_task
from gkd_jax.metrics_log import MetricsLog
from gkd_jax.models import COMPUTE_DTYPES, DecoderConfig, LMFunctions, build_decoder, functional_lm
from gkd_jax.models.hf import is_hf_source, load_pretrained, resolve_model_dir, save_pretrained
from gkd_jax.models.lm import shared_vocab_logits
from gkd_jax.resources import resolve_path
from gkd_jax.sampling import SamplingConfig, make_sampler
from gkd_jax.schedules import lmbda_at


# ---------------------------------------------------------------------------- the jitted step
def token_losses(config, student: LMFunctions, teacher, params, teacher_params, mb, vocab: int):
    """Per-completion-token loss [b, N] for one micro-batch; GKD compares the first `vocab`
    logits of both models (their shared vocabulary)."""
    args = (mb["prompt"], mb["prompt_mask"], mb["completion"], mb["completion_mask"])
    s_logits = student.score(params, *args)  # [b, N, V]
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


def make_train_step(config, student: LMFunctions, teacher: LMFunctions | None, tx):
    """(state, teacher_params, batch [B, ...]) -> (state, metrics), gradient accumulation inside."""
    accum = config.grad_accum
    reduction = config.gkd.reduction if config.objective == "gkd" else config.sft_reduction
    vocab = student.vocab_size if teacher is None else min(student.vocab_size, teacher.vocab_size)

    def sum_count(params, teacher_params, mb):
        per_token = token_losses(config, student, teacher, params, teacher_params, mb, vocab)
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
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "loss_tokens": jnp.sum(batch["completion_mask"]),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return jax.jit(step, donate_argnums=(0,))


def make_optimizer(config) -> optax.GradientTransformation:
    """config.optim -> optax (gkd_jax/optim.py: AdamW or Adafactor, cosine or linear schedule)."""
    return optim.make_optimizer(config)


# ---------------------------------------------------------------------------- models
def model_config(config_model: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**config_model.to_dict())


def obtain_model(spec, workdir: str, name: str, dtype, expected=None):
    """Load the model a spec names: a Hugging Face directory or hub id, or our checkpoint (whose
    shape must be `expected`, when given). With `checkpoint=""` it lives in WORKDIR/NAME/model
    and, when missing, is first trained there by the spec's recipe."""
    if is_hf_source(spec.checkpoint):
        log(f"[{name}] loading Hugging Face checkpoint {spec.checkpoint}")
        return load_pretrained(spec.checkpoint, dtype=dtype)
    if spec.checkpoint:
        path = resolve_path(spec.checkpoint)
        if not checkpoint.has_model(path):
            raise FileNotFoundError(
                f"config.{name}.checkpoint: no model at {path} (neither our checkpoint nor a "
                f"Hugging Face directory). Make one with `python -m gkd_jax.train --config="
                f"{spec.recipe or 'CONFIG'} --workdir=DIR` and pass DIR/model, or set "
                f"--config.{name}.checkpoint= to train it in the workdir."
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
    for key in ("prompt", "target"):
        rows = np.nonzero((data[key] >= vocab).any(axis=1))[0]
        if len(rows):
            raise ValueError(
                f"{len(rows)} {name} examples hold token ids >= {vocab} (the models' shared "
                f"vocabulary) in their {key}, first #{rows[0]}: the tokenizer has tokens the "
                "models have no embedding for"
            )


# ---------------------------------------------------------------------------- evaluation
def decode_split(sampler, params, data, batch_size, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Greedy completions of every row: tokens [N, T] and mask [N, T] (numpy)."""
    params = jax.device_put(params, NamedSharding(mesh, P()))
    rows = NamedSharding(mesh, P("data"))
    tokens, masks = [], []
    for batch in pipeline.in_order(data, batch_size):
        out = sampler(
            params,
            jax.device_put(batch["prompt"], rows),
            jax.device_put(batch["prompt_mask"], rows),
            jax.random.key(0),
        )
        tokens.append(np.asarray(out.tokens)[batch["valid"]])
        masks.append(np.asarray(out.mask)[batch["valid"]])
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
    """Greedy decoding of the eval split; the task's metric on the completions, or (no metric)
    the student's divergence from the teacher on its own greedy completions."""
    tokens, mask = decode_split(
        ev["samplers"][who], params, ev["data"], ev["config"].eval.batch_size, ev["mesh"]
    )
    tok, task, split = ev["tokenizer"], ev["task"], ev["split"]
    texts = [tok.decode(t[m], skip_special_tokens=True) for t, m in zip(tokens, mask, strict=True)]
    if task.metric is not None:
        score = task.metric(texts, split.references)
    else:
        per_seq = []
        bs = ev["config"].eval.batch_size
        data = dict(ev["data"], target=tokens, target_mask=mask)
        for batch in pipeline.in_order(data, bs):
            d = ev["divergence"](
                params, ev["teacher_params"], batch["prompt"], batch["prompt_mask"],
                batch["target"], batch["target_mask"],
            )  # fmt: skip
            per_seq.append(np.asarray(d)[batch["valid"]])
        score = float(np.mean(np.concatenate(per_seq)))
    samples = [(p, t) for p, t in zip(split.prompts[:3], texts[:3], strict=True)]
    return {task.metric_name: score, "samples": samples}


# ---------------------------------------------------------------------------- the loop
def log(msg: str) -> None:
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

    # Models. The student starts from `init` (an SFT checkpoint) or from scratch.
    student_hf = is_hf_source(config.init.checkpoint)
    out_dir = os.path.join(workdir, "model")
    if checkpoint.has_model(out_dir) and not student_hf:
        checkpoint.check_model_config(out_dir, model_config(config.model))
    teacher = None
    if config.objective == "gkd":
        expected = (
            None if is_hf_source(config.teacher.checkpoint) else model_config(config.teacher.model)
        )
        teacher = obtain_model(config.teacher, workdir, "teacher", dtype, expected)
    if config.init.checkpoint or config.init.recipe:
        expected = None if student_hf else model_config(config.model)
        student = obtain_model(config.init, workdir, "init", dtype, expected)
    else:
        student = build_decoder(model_config(config.model), seed=config.seed, dtype=dtype)
    if checkpoint.has_model(out_dir) and student_hf:
        checkpoint.check_model_config(out_dir, student.cfg)
    vocab = shared_vocab_size(config, tokenizer, student, teacher)
    if task.metric is None and teacher is None:
        raise ValueError(f"task {task.name!r} is scored against a teacher: use objective='gkd'")

    # Data: fixed shapes, so each jitted function compiles once.
    train_split, eval_split = task.load(config, tokenizer, stops, log=log)
    pack = functools.partial(
        pipeline.pack,
        max_prompt_len=config.data.max_prompt_len,
        max_target_len=config.max_new_tokens,
        pad_id=tokenizer.pad_token_id,
    )
    train_data = pack(train_split.prompt_ids, train_split.completion_ids)
    eval_data = pack(eval_split.prompt_ids, eval_split.completion_ids)
    check_token_ids(train_data, vocab, "training")
    check_token_ids(eval_data, vocab, "evaluation")

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params, student_fns = functional_lm(student)
    teacher_params, teacher_fns = None, None
    if teacher is not None:
        teacher_params, teacher_fns = functional_lm(teacher)
        teacher_params = jax.device_put(teacher_params, replicated)
    greedy = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=0.0,
        stop_ids=stops,
        pad_id=tokenizer.pad_token_id,
        vocab_size=vocab,
    )
    # One compiled greedy decoder per model: the student's serves its first and last evaluation.
    ev = dict(
        config=config, task=task, tokenizer=tokenizer, split=eval_split, data=eval_data,
        mesh=mesh, teacher_params=teacher_params,
        samplers={"student": make_sampler(student_fns.decoding, greedy)},
    )  # fmt: skip
    if task.metric is None:
        ev["divergence"] = make_divergence_fn(config, student_fns, teacher_fns)
    # Train state: fresh, or the latest checkpoint in WORKDIR/checkpoints (a resumed run).
    tx = make_optimizer(config)
    state = jax.device_put(
        {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)},
        replicated,
    )
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
        ev["samplers"]["teacher"] = make_sampler(teacher_fns.decoding, greedy)
        if "teacher" not in results:
            results["teacher"] = evaluate(ev, teacher_params, "teacher")
    if "start" not in results:
        results["start"] = evaluate(ev, params)
    for name, r in results.items():
        stored = " (stored in the checkpoint)" if saved else ""
        log(f"[eval] {name}: {task.metric_name} {r[task.metric_name]:.4f}{stored}")

    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.sampling.temperature,
        top_k=config.sampling.top_k,
        top_p=config.sampling.top_p,
        stop_ids=stops,
        pad_id=tokenizer.pad_token_id,
        vocab_size=vocab,
    )
    samplers = {}
    if teacher is not None:
        samplers["student"] = make_sampler(student_fns.decoding, sampling)
        samplers["teacher"] = make_sampler(teacher_fns.decoding, sampling)
    train_step = make_train_step(config, student_fns, teacher_fns, tx)

    # The data position, the sampling key and the lmbda draws are functions of (seed, step):
    # a run resumed at step k sees exactly what an uninterrupted one sees from step k on.
    data_iter = pipeline.batches(train_data, config.batch_size, config.seed, start=start_step)
    base_key = jax.random.key(config.seed)
    skipped, nonfinite_run = saved.get("skipped_steps", 0), saved.get("nonfinite_run", 0)
    t_start = t_window = time.time()
    on_policy_window = []
    metrics = MetricsLog(workdir, start_step)  # drops rows a previous run logged after it
    if not saved:
        metrics.scalars(0, eval_scalars(results, task.metric_name))
    # Saves are asynchronous; leaving this block waits for the one in flight.
    with ckpts, preemption.sigterm_flag() as sigterm:
        for step in range(start_step, config.steps):
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
            done = step + 1
            on_policy_window.append(on_policy_frac)
            # One scalar read per step: the next step samples from these parameters anyway.
            nonfinite_run = nonfinite_run + 1 if float(m["nonfinite"]) else 0
            skipped += int(nonfinite_run > 0)
            too_many_nonfinite = nonfinite_run >= config.max_nonfinite_steps
            if done % config.log_every == 0 or done == config.steps or too_many_nonfinite:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
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
            meta = {"eval": results, "skipped_steps": skipped, "nonfinite_run": nonfinite_run}
            if too_many_nonfinite:
                ckpts.wait()
                raise FloatingPointError(nonfinite_message(config, done, ckpts))
            if sigterm():
                ckpts.save(done, state, meta)
                raise preemption.Preempted(done)
            stop_here = config.stop_after_steps and done - start_step == config.stop_after_steps
            if stop_here and done < config.steps:
                ckpts.save(done, state, meta)
                reason = f"stopped (config.stop_after_steps={config.stop_after_steps})"
                raise preemption.Preempted(done, reason)
            # Only a state that is updating normally is saved: in a run of non-finite steps,
            # the last good checkpoint must survive the rotation to `checkpoint.keep`.
            every = config.checkpoint.every_steps
            if every and done % every == 0 and done < config.steps and not nonfinite_run:
                ckpts.save(done, state, meta)
            every = config.eval.every_steps
            if every and done % every == 0 and done < config.steps and not nonfinite_run:
                score = evaluate(ev, state["params"])[task.metric_name]
                log(f"[eval] step {done}: {task.metric_name} {score:.4f}")
                metrics.scalars(done, {f"eval/{task.metric_name}": score})
                keep_if_best(student, state["params"], done, score, task, workdir)
        # The end state too: a crash in the export or the evaluation below resumes here.
        meta = {"eval": results, "skipped_steps": skipped, "nonfinite_run": nonfinite_run}
        ckpts.save(config.steps, state, meta)
    train_seconds = time.time() - t_start

    student = rebuild(student, state["params"])
    checkpoint.save_model(out_dir, student)
    if config.export.hf:
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
    key = jax.random.fold_in(base_key, step)
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
    nnx.update(model, jax.device_get(params))
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
        tokenizer.save_pretrained(copy)
        with open(os.path.join(copy, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": list(stops)}, f)
        return tokenizer, stops
    path = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = build_char_tokenizer(path)
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
    head = f"Evaluation on {config.eval.num_examples} held-out {summary['task']} problems (greedy)"
    return head + "\n" + "\n".join(lines)
