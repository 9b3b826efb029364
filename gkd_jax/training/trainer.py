"""train_and_evaluate(config, workdir): supervised fine-tuning and GKD, as setup -> loop -> finish.

  setup   the tokenizer and models (models/sources.py), the data (data/), the first
          evaluation (evaluation/evaluator.py), the train state (fresh, or resumed from
          WORKDIR/checkpoints), the samplers and the jitted step (step.py: one step of the paper's
          Algorithm 1)
  loop    per step: a batch, its completions, the update; then the periodic actions, each
          asking `itstime`: a log line and metrics row, a checkpoint, an evaluation
  finish  the final checkpoint, WORKDIR/model (and hf_model), the final evaluation,
          results.json and the results table

The data position, the sampling key and the lmbda draws are functions of (config.seed, step):
a run resumed at step k sees exactly what an uninterrupted one sees from step k on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gkd_jax.config.checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.task_types import Task
from gkd_jax.data.tasks import get_task
from gkd_jax.decoding.sampler_memory import (
    SCHEDULER_LIMIT,
    device_hbm_bytes,
    sampler_compiler_options,
)
from gkd_jax.decoding.sampling import make_sampler
from gkd_jax.evaluation.evaluator import (
    Evaluator,
    check_token_ids,
    divergence_key,
    eval_line,
    eval_scalars,
    evaluation_details,
    keep_if_best,
    make_divergence_fn,
    make_divergence_to_teacher,
    make_eval_decoder,
    make_reference_nll,
    results_table,
    teacher_forced,
)
from gkd_jax.models import COMPUTE_DTYPES, build_decoder, functional_lm, lora, with_params
from gkd_jax.models.hf import save_pretrained
from gkd_jax.models.remat import set_remat
from gkd_jax.models.sources import (
    expected_shape,
    init_layers,
    load_or_build_tokenizer,
    model_config,
    obtain_model,
    shared_vocab_size,
)
from gkd_jax.objectives import policy_gradient
from gkd_jax.parallel import distributed, sharding
from gkd_jax.parallel.distributed import log
from gkd_jax.training import checkpoint, preemption, teacher_cache_store
from gkd_jax.training.metrics_log import MetricsLog
from gkd_jax.training.optim import make_optimizer
from gkd_jax.training.reward_scoring import INDEX, RewardScorer, repeat_prompts
from gkd_jax.training.rl_step import make_rl_train_step
from gkd_jax.training.step import (
    check_loss_impl,
    gkd_completions,
    make_train_step,
    score_args,
    training_sampling,
)


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
    """Whether a periodic action runs after step `step` (1-based) of `total`: every `every`
    steps (0: never), and at the last step exactly when `last`."""
    if step == total:
        return last
    return every > 0 and step % every == 0


@dataclasses.dataclass
class Run:
    """What setup builds and the loop and finish read: fixed for the whole run."""

    config: ml_collections.ConfigDict
    workdir: str
    task: Task
    tokenizer: Any
    stops: tuple[int, ...]
    vocab: int  # the shared vocabulary the loss compares (sources.shared_vocab_size)
    rows: jax.sharding.NamedSharding  # batch rows over the mesh (sharding.batch_sharding)
    student: nnx.Module  # its graph: the trained parameters go back into it to be saved
    teacher_params: Any  # None for SFT
    train_data: dict[str, np.ndarray]  # packed (pipeline.pack)
    evaluator: Evaluator
    samplers: dict[str, Callable]  # on-policy / SeqKD sampling, by model
    train_step: Callable  # step.make_train_step, or rl_step.make_rl_train_step
    ckpts: checkpoint.TrainCheckpoints
    metrics: MetricsLog
    start_step: int  # > 0: resumed from the checkpoint at this step
    # Policy-gradient runs (policy_gradient.policy_gradient): the rewards of the samples (None when
    # rl.alpha = 1), and the step's arguments after the batch (the frozen start, for
    # rl.kl_to_start).
    rewards: RewardScorer | None = None
    step_extra: tuple = ()


@dataclasses.dataclass
class Progress:
    """What the loop counts, kept in every checkpoint beside the train state (its meta)."""

    eval: dict[str, dict] = dataclasses.field(default_factory=dict)  # by name: teacher, start
    skipped_steps: int = 0  # steps whose non-finite update was skipped
    nonfinite_run: int = 0  # non-finite steps in a row, up to the last one
    out_of_vocab_ids: int = 0  # completion ids past the shared vocabulary, so far

    def meta(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per `config` into `workdir`; return the final evaluation (also in results.json).

    Resumes from the latest train-state checkpoint in WORKDIR/checkpoints. On SIGTERM, or after
    `config.stop_after_steps`, saves one and raises `preemption.Preempted`."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    run, state, progress = setup(config, workdir)
    with run.metrics:  # closed however the run ends: a W&B run is finished
        t_start = time.time()
        state = loop(run, state, progress)
        return finish(run, state, progress, train_seconds=time.time() - t_start)


# ---------------------------------------------------------------------------- setup
def setup(config, workdir: str) -> tuple[Run, Any, Progress]:
    """(run, train state, progress), everything checked before the first compilation."""
    task = get_task(config.task)
    tokenizer, stops = load_or_build_tokenizer(config, workdir)
    validate_config(config, vocab_size=len(tokenizer))
    if config.gkd.cross_tokenizer:  # refused here rather than trained as if it were off
        raise ValueError(
            f"gkd.cross_tokenizer={config.gkd.cross_tokenizer!r}: the checks, the alignment "
            "(data/token_alignment.py), the objectives (objectives/cross_tokenizer.py) and the "
            "teacher's batches (training/teacher_view.py) exist, but the training step does not "
            "use them yet (issue 26); set gkd.cross_tokenizer='' and a teacher of the student's "
            "tokenizer"
        )
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    student, teacher = load_models(config, workdir, mesh)
    vocab = shared_vocab_size(config, tokenizer, student, teacher)
    if task.metric is None and teacher is None:
        fix = "set gkd.teacher_cache=''" if config.gkd.teacher_cache else "use objective='gkd'"
        raise ValueError(f"task {task.name!r} is scored against a live teacher: {fix}")

    train_split, train_data, eval_split, eval_data = load_data(
        config, task, tokenizer, stops, vocab
    )
    rewards = add_training_extras(config, tokenizer, train_split, train_data, vocab)
    params, student_fns = functional_lm(student)
    teacher_params, teacher_fns, teacher_shardings = place_teacher(teacher, mesh)
    check_loss_impl(config, student_fns, teacher_fns)  # before the first compilation

    # Train state: fresh, or the latest checkpoint in WORKDIR/checkpoints (a resumed run).
    tx = make_optimizer(config)
    state, state_shardings, step_extra = init_state(config, params, tx, mesh)
    ckpts = checkpoint.TrainCheckpoints(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep
    )
    state, saved = ckpts.restore_latest(state, max_step=config.steps)
    # Every decoder (training samplers, evaluation) runs beside the train state and teacher.
    decode_options = sampler_options(
        config, state, state_shardings, teacher_params, teacher_shardings
    )
    evaluator = make_evaluator(
        config, task, tokenizer, stops, vocab, eval_split, eval_data, mesh,
        student_fns, teacher_fns, teacher_params, compiler_options=decode_options,
    )  # fmt: skip
    start_step = int(state["step"])
    if saved:
        log(f"resuming from step {start_step} ({ckpts.path(start_step)})")
    progress = Progress.from_meta(saved)
    first_evaluations(evaluator, progress, params, teacher_params, resumed=bool(saved))

    rows = sharding.batch_sharding(mesh)
    samplers = {}
    if teacher is not None:
        sampling = training_sampling(config, stops, tokenizer.pad_token_id, vocab)
        for name, fns in (("student", student_fns), ("teacher", teacher_fns)):
            samplers[name] = make_sampler(
                fns.decoding, sampling, rows=rows, compiler_options=decode_options
            )
    make_step = make_rl_train_step if policy_gradient.policy_gradient(config) else make_train_step
    train_step = make_step(
        config, student_fns, teacher_fns, tx, mesh=mesh, state_shardings=state_shardings,
        teacher_shardings=teacher_shardings,
    )  # fmt: skip
    # Drops rows a previous run logged after start_step. Process 0 writes for all.
    metrics = MetricsLog(
        workdir, start_step, enabled=distributed.is_main_process(),
        wandb_project=config.log.wandb_project, config=config.to_dict(), log=log,
    )  # fmt: skip
    if not saved:
        metrics.write(0, eval_scalars(progress.eval, task.metric_name))
    run = Run(
        config, workdir, task, tokenizer, stops, vocab, rows, student, teacher_params,
        train_data, evaluator, samplers, train_step, ckpts, metrics, start_step, rewards,
        step_extra,
    )  # fmt: skip
    return run, state, progress


def sampler_options(
    config, state, state_shardings, teacher_params, teacher_shardings
) -> dict[str, str] | None:
    """The decoders' jax.jit compiler options: on TPU, the scheduler's HBM share capped at what
    the train state and the teacher leave (sampler_memory; the batch, a few MB, is left out)."""
    platform = jax.default_backend()
    hbm = device_hbm_bytes() if platform == "tpu" else None
    resident = sharding.per_device_bytes(state, state_shardings) + sharding.per_device_bytes(
        teacher_params, teacher_shardings
    )
    options = sampler_compiler_options(config.sampler_hbm_percent, platform, hbm, resident)
    if options:
        how = "sampler_hbm_percent" if config.sampler_hbm_percent else "automatic"
        # the limit is a target the scheduler may pass (sampler_memory): the planner compiles
        # the step for this slice and names a percent that fits where this one does not
        log(
            f"[memory] decoders compiled with the TPU scheduler at {options[SCHEDULER_LIMIT]} % "
            f"of HBM ({how}); `python -m gkd_jax.plan` with this config checks that the step fits"
        )
    return options


def add_training_extras(
    config, tokenizer, train_split, train_data: dict[str, np.ndarray], vocab: int
) -> RewardScorer | None:
    """Adds to `train_data` (in place) what the step needs beyond the packed examples: a
    teacher cache's top-K, and (policy gradient) each row's example index; returns the
    scorer of the samples' rewards (None unless rl.alpha < 1)."""
    if config.gkd.teacher_cache:  # the teacher's top-K on these targets, row for row
        train_data |= teacher_cache_store.read(config.gkd.teacher_cache, config, train_data, vocab)
        log(f"[teacher] top-{config.gkd.teacher_top_k} from the cache {config.gkd.teacher_cache}")
    rewards = None
    # Policy gradient: each batch row says which training example it is, for its reference.
    if policy_gradient.policy_gradient(config):
        train_data[INDEX] = np.arange(len(train_split.references))
        if config.rl.alpha < 1:
            rewards = RewardScorer(
                config.rl.reward, tokenizer, train_split.prompts, train_split.references
            )
    return rewards


def place_teacher(teacher: nnx.Module | None, mesh):
    """(teacher params, teacher LMFunctions, their shardings), the parameters placed on the
    mesh; all None without a teacher (SFT, or a teacher cache)."""
    if teacher is None:
        return None, None, None
    teacher_params, teacher_fns = functional_lm(teacher)
    teacher_shardings = sharding.tree_shardings(teacher_params, mesh)
    teacher_params = jax.device_put(teacher_params, teacher_shardings)  # no-op if loaded so
    return teacher_params, teacher_fns, teacher_shardings


def make_evaluator(
    config, task: Task, tokenizer, stops, vocab: int, eval_split, eval_data, mesh,
    student_fns, teacher_fns, teacher_params, compiler_options=None,
) -> Evaluator:  # fmt: skip
    """The run's Evaluator: the student's decoder, the teacher's where the task has a metric to
    compare it by, and the divergence from the teacher where the task has none.
    `compiler_options`: the decoders' (sampler_options)."""
    # One compiled eval decoder (config.eval.decoding) per model: the student's serves every
    # evaluation of the run.
    eval_decoder = functools.partial(
        make_eval_decoder, config=config, stop_ids=stops, pad_id=tokenizer.pad_token_id,
        vocab_size=vocab, compiler_options=compiler_options,
    )  # fmt: skip
    divergence = None
    if task.metric is None:  # scored by the student's divergence from the teacher
        divergence = make_divergence_fn(config, student_fns, teacher_fns)
    to_teacher = None
    if config.eval.divergence_to_teacher:
        to_teacher = make_divergence_to_teacher(config, student_fns, teacher_fns)
    # eval.teacher_forced: the references scored too (what degenerate replies cannot game)
    nll = make_reference_nll(config, student_fns) if teacher_forced(config, task) else None
    evaluator = Evaluator(
        config, task, tokenizer, eval_split, eval_data, mesh,
        decoders={"student": eval_decoder(student_fns.decoding)},
        teacher_params=teacher_params, divergence=divergence, to_teacher=to_teacher,
        reference_nll=nll, stop_ids=stops,
    )  # fmt: skip
    if teacher_fns is not None and task.metric is not None:
        evaluator.decoders["teacher"] = eval_decoder(teacher_fns.decoding)
    return evaluator


def init_state(config, params, tx, mesh) -> tuple[Any, Any, tuple]:
    """(fresh train state, its shardings, the step's arguments after the batch). The optimizer
    state is created in its shardings, next to the parameters already placed."""
    step_extra = ()
    if policy_gradient.kl_to_start(config):  # a frozen copy of the start, the step's reference
        step_extra = (jax.tree.map(jnp.copy, params),)  # params may be donated with the state
    # The optimizer state of the trainable parameters only: a LoRA student's adapters.
    state, state_shardings = sharding.init_train_state(
        params, tx, mesh, trainable=lora.trainable_params
    )
    if step_extra:
        step_extra = (jax.device_put(step_extra[0], state_shardings["params"]),)
    return state, state_shardings, step_extra


def load_data(config, task: Task, tokenizer, stops, vocab: int):
    """(train Split, train data, eval Split, eval data): the task's splits, packed to fixed
    shapes so that each jitted function compiles once, every token id inside the shared
    vocabulary."""
    train_split, eval_split = task.load(config, tokenizer, stops, log=log)
    train_data = pipeline.pack_split(train_split, config, tokenizer.pad_token_id)
    eval_data = pipeline.pack_split(eval_split, config, tokenizer.pad_token_id)
    check_token_ids(train_data, vocab, "training")
    check_token_ids(eval_data, vocab, "evaluation")
    return train_split, train_data, eval_split, eval_data


def first_evaluations(
    evaluator: Evaluator, progress: Progress, params, teacher_params, *, resumed: bool
) -> None:
    """The teacher's (when it has a decoder) and the student's start, into progress.eval: they
    are stored in every checkpoint, so a resumed run does not redo them."""
    if "teacher" in evaluator.decoders and "teacher" not in progress.eval:
        progress.eval["teacher"] = evaluator(teacher_params, "teacher")
    if "start" not in progress.eval:
        progress.eval["start"] = evaluator(params)
    metric = evaluator.task.metric_name
    for name, r in progress.eval.items():
        stored = " (stored in the checkpoint)" if resumed else ""
        log(f"[eval] {name}: {eval_line(r, metric)}{stored}")


def load_models(config, workdir: str, mesh) -> tuple[nnx.Module, nnx.Module | None]:
    """(student, teacher), loaded straight into their shardings on the mesh (sharding.py). The
    student starts from `init` (an SFT checkpoint) or from scratch; the teacher is None for
    SFT and with a teacher cache (gkd.teacher_cache). A model already trained in WORKDIR/model
    must have the student's shape."""
    dtype = COMPUTE_DTYPES[config.dtype]
    # Parameter dtypes: the student's master weights (its optimizer state follows them) and
    # the frozen teacher's.
    student_pd = COMPUTE_DTYPES[config.param_dtype]
    teacher_pd = COMPUTE_DTYPES[config.teacher_param_dtype]
    # A start cut from the source's layers (config.init.layers) brings its own shape: the
    # source's, not config.model's. Every start cuts it again (a LoRA student's base is not
    # in its checkpoints); a resumed run's trained parameters then replace it.
    layers = init_layers(config)
    init_shape = None if layers else expected_shape(config.init.checkpoint, config.model)
    out_dir = os.path.join(workdir, "model")
    if checkpoint.has_model(out_dir) and init_shape is not None:
        checkpoint.check_model_config(out_dir, init_shape)
    obtain = functools.partial(obtain_model, mesh=mesh, train=train_and_evaluate)
    teacher = None
    if config.objective == "gkd" and not config.gkd.teacher_cache:  # cached: never loaded
        # .get: a Hugging Face teacher's source has no `model` fields
        expected = expected_shape(config.teacher.checkpoint, config.teacher.get("model"))
        teacher = obtain(
            config.teacher, workdir, "teacher", dtype, expected, param_dtype=teacher_pd
        )
    if config.init.checkpoint or config.init.recipe:
        student = obtain(
            config.init, workdir, "init", dtype, init_shape, param_dtype=student_pd,
            layers=layers,
        )  # fmt: skip
    else:
        cfg = model_config(config.model)
        student = sharding.shard_model(
            lambda: build_decoder(cfg, seed=config.seed, dtype=dtype, param_dtype=student_pd), mesh
        )
    if checkpoint.has_model(out_dir) and init_shape is None:
        checkpoint.check_model_config(out_dir, student.cfg)
    if config.lora.rank:  # adapters on the base weights just loaded (frozen by the step)
        student = lora.add_lora(
            student, rank=config.lora.rank, alpha=config.lora.alpha,
            targets=config.lora.targets, seed=config.seed, mesh=mesh,
        )  # fmt: skip
    return set_remat(student, config.remat), teacher


# ---------------------------------------------------------------------------- the loop
def loop(run: Run, state, progress: Progress):
    """Steps start_step .. config.steps; returns the final train state (also checkpointed)."""
    config = run.config
    # Each host gathers only the rows its devices hold; the global arrays are built from them.
    mine = distributed.host_rows(config.batch_size, run.rows)
    samples = config.rl.num_samples if INDEX in run.train_data else 1  # policy gradient
    if samples == 1:
        data = pipeline.batches(
            run.train_data, config.batch_size, config.seed, start=run.start_step, rows=mine
        )
    else:  # batch_size / k prompts, each k times; this host's rows of that
        prompts = pipeline.batches(
            run.train_data, config.batch_size // samples, config.seed, start=run.start_step
        )
        data = ({k: v[mine] for k, v in repeat_prompts(b, samples).items()} for b in prompts)
    base_key = jax.random.key(config.seed)
    report = StepReport(run)
    # Saves are asynchronous; leaving this block waits for the one in flight.
    with run.ckpts, preemption.sigterm_flag() as sigterm:
        for step in range(run.start_step, config.steps):
            local = next(data)
            index = local.pop(INDEX, None)  # policy gradient: the rows' training examples
            batch = {
                k: distributed.global_batch(v, run.rows, config.batch_size)
                for k, v in local.items()
            }
            on_policy = 0.0
            if config.objective == "gkd":
                completion, completion_mask, on_policy = gkd_completions(
                    config, step, run.samplers, state["params"], run.teacher_params, base_key,
                    *score_args(batch),
                )  # fmt: skip
                batch = dict(batch, completion=completion, completion_mask=completion_mask)
            if run.rewards is not None:  # outside jit: rewards are Python functions of text
                tokens, mask = distributed.to_host((completion, completion_mask))
                local_rewards = run.rewards(index, tokens[mine], mask[mine])
                batch["rewards"] = distributed.global_batch(
                    local_rewards, run.rows, config.batch_size
                )
            # The step is compiled for rows over data x fsdp: a no-op for rows placed so.
            state, m = run.train_step(
                state, run.teacher_params, jax.device_put(batch, run.rows), *run.step_extra
            )
            done = step + 1
            count_step(run, progress, done, m)
            report.add(on_policy)
            too_many_nonfinite = progress.nonfinite_run >= config.max_nonfinite_steps
            if itstime(done, config.log_every, config.steps) or too_many_nonfinite:
                report.write(done, m, progress)
            if too_many_nonfinite:
                run.ckpts.wait()
                raise FloatingPointError(nonfinite_message(config, done, run.ckpts))
            stop_early(run, state, progress, done, sigterm())
            # Only a state that is updating normally is saved or evaluated: in a run of
            # non-finite steps, the last good checkpoint must survive the rotation to
            # `checkpoint.keep`.
            if progress.nonfinite_run:
                continue
            if itstime(done, config.checkpoint.every_steps, config.steps, last=False):
                run.ckpts.save(done, state, progress.meta())
            if itstime(done, config.eval.every_steps, config.steps, last=False):
                evaluate_student(run, state["params"], done)
        # The end state too: a crash in the export or the evaluation below resumes here.
        run.ckpts.save(config.steps, state, progress.meta())
    return state


def count_step(run: Run, progress: Progress, done: int, m: dict) -> None:
    """Count the step's non-finite update and out-of-vocabulary completion ids (one read per
    step: the next step samples from these parameters anyway)."""
    nonfinite, step_oov = jax.device_get((m["nonfinite"], m["out_of_vocab"]))
    progress.nonfinite_run = progress.nonfinite_run + 1 if float(nonfinite) else 0
    progress.out_of_vocab_ids += int(step_oov)
    if step_oov:
        log(
            f"WARNING: step {done}: {int(step_oov)} completion token ids outside the "
            f"shared vocabulary [0, {run.vocab}) were trained on ({progress.out_of_vocab_ids} "
            "so far)"
        )
    progress.skipped_steps += int(progress.nonfinite_run > 0)


def stop_early(run: Run, state, progress: Progress, done: int, got_sigterm: bool) -> None:
    """Save and raise preemption.Preempted on SIGTERM (any process's: saving is collective, so
    all stop at the same step), or after config.stop_after_steps steps of this invocation."""
    config = run.config
    if distributed.any_process(got_sigterm):
        run.ckpts.save(done, state, progress.meta())
        raise preemption.Preempted(done)
    stop_after = config.stop_after_steps
    if stop_after and done - run.start_step == stop_after and done < config.steps:
        run.ckpts.save(done, state, progress.meta())
        raise preemption.Preempted(done, f"stopped (config.stop_after_steps={stop_after})")


def evaluate_student(run: Run, params, done: int) -> None:
    """A periodic evaluation: logged, written as eval/METRIC and the other eval/* scores
    (eval_scalars), and kept in WORKDIR/best_model when it is the best so far."""
    metric = run.task.metric_name
    result = run.evaluator(params)
    score = result[metric]
    log(f"[eval] step {done}: {eval_line(result, metric)}")
    run.metrics.write(done, eval_scalars({"student": result}, metric))
    keep_if_best(run.student, params, done, score, run.task, run.workdir)


class StepReport:
    """The training log: a line and a metrics row every config.log_every steps, with the
    throughput over the steps since the previous one (the first window also pays for
    compilation; later ones are the steady state)."""

    def __init__(self, run: Run):
        self.run = run
        self.t_start = self.t_window = time.time()
        self.on_policy: list[float] = []  # each step's on-policy fraction, since the last row

    def add(self, on_policy: float) -> None:
        self.on_policy.append(on_policy)

    def write(self, done: int, m: dict, progress: Progress) -> None:
        config = self.run.config
        m = {k: float(v) for k, v in jax.device_get(m).items() if k != "out_of_vocab"}
        now = time.time()
        rate = len(self.on_policy) * config.batch_size / (now - self.t_window)
        elapsed, eta = now - self.t_start, (config.steps - done) * config.batch_size / rate
        row = {
            **m,
            "skipped_steps": progress.skipped_steps,
            "out_of_vocab_ids": progress.out_of_vocab_ids,
            "on_policy": float(np.mean(self.on_policy)),
            "examples_per_s": rate,
        }
        self.run.metrics.write(done, {f"train/{k}": v for k, v in row.items()})
        self.t_window, self.on_policy = now, []
        log(
            f"step {done:5d}/{config.steps} | loss {m['loss']:.4f} | "
            f"grad {m['grad_norm']:.3f} | "
            + (f"reward {m['reward']:.3f} | " if "reward" in m else "")
            + f"{rate:7.1f} ex/s | "
            f"elapsed {fmt_time(elapsed)} | ETA {fmt_time(eta)}"
        )


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


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


# ---------------------------------------------------------------------------- finish
def finish(run: Run, state, progress: Progress, *, train_seconds: float) -> dict[str, Any]:
    """WORKDIR/model (and hf_model), the final evaluation, results.json; returns the summary."""
    config, task, workdir = run.config, run.task, run.workdir
    student = with_params(run.student, state["params"])
    checkpoint.save_model(os.path.join(workdir, "model"), student)
    if config.export.hf and distributed.is_main_process():
        hf_dir = save_pretrained(
            student, os.path.join(workdir, "hf_model"), tokenizer=run.tokenizer,
            stop_ids=run.stops, dtype=config.export.dtype,
        )  # fmt: skip
        log(f"[export] Hugging Face model -> {hf_dir}")
    results = progress.eval
    results["final"] = run.evaluator(state["params"])
    run.metrics.write(config.steps, eval_scalars({"final": results["final"]}, task.metric_name))
    if config.eval.every_steps:
        final_score = results["final"][task.metric_name]
        keep_if_best(run.student, state["params"], config.steps, final_score, task, workdir)
    examples = (config.steps - run.start_step) * config.batch_size
    summary = {
        "task": config.task,
        "objective": config.objective,
        "metric": task.metric_name,
        "scores": {k: v[task.metric_name] for k, v in results.items()},
        "train_seconds": train_seconds,
        "examples_per_s": examples / max(train_seconds, 1e-9),
        "steps": config.steps,
        "skipped_steps": progress.skipped_steps,
        "samples": results["final"]["samples"],
        **evaluation_details(results, run.evaluator),  # every score, the references' replies
    }
    if config.eval.divergence_to_teacher:  # the student's rows: start, final
        key = divergence_key(config)
        summary["divergence_to_teacher"] = {k: v[key] for k, v in results.items() if key in v}
    if distributed.is_main_process():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
    log(results_table(summary, config))
    return summary
