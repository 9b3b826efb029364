"""Start-up checks: a bad config value fails here, naming the field and the fix, before any
compilation or data loading starts."""

from __future__ import annotations

import math

import jax
import ml_collections

from gkd_jax.beam_search import LENGTH_PENALTIES
from gkd_jax.comparison import compared_lmbdas
from gkd_jax.data import paper_tasks
from gkd_jax.data.records import PROMPT_OVERFLOW
from gkd_jax.data.sources import SOURCES
from gkd_jax.data.tasks import TASKS
from gkd_jax.evaluation import DECODINGS, EARLY_STOPPING
from gkd_jax.losses import DIVERGENCES, REDUCTIONS
from gkd_jax.models import COMPUTE_DTYPES
from gkd_jax.models.hf import SAVE_DTYPES
from gkd_jax.models.remat import REMAT_POLICIES
from gkd_jax.optim import OPTIMIZERS, SCHEDULES
from gkd_jax.resources import is_hf_source
from gkd_jax.schedules import LMBDA_SCHEDULES
from gkd_jax.sharding import mesh_shape

OBJECTIVES = ("gkd", "sft")
# How the GKD loss is computed (step.Objective.sum_count); the memory-lean forms are generalized
# JSDs (loss_forms.py), so they take the divergences that are one.
LOSS_IMPLS = ("full", "chunked", "fused")
LOSS_FORM_DIVERGENCES = ("jsd", "fkl", "rkl")
LMBDA_MODES = ("batch", "example")
WANDB_FORBIDDEN = "/\\#?%:"  # characters a W&B project name cannot hold


def _fail(field: str, value, allowed: str):
    raise ValueError(f"config.{field}={value!r} is invalid: {allowed}")


def _in_unit_interval(field: str, value) -> None:
    if not 0.0 <= float(value) <= 1.0:
        _fail(field, value, "must be in [0, 1]")


def _positive(field: str, value) -> None:
    if not value > 0:
        _fail(field, value, "must be > 0")


def _integer_at_least(field: str, value, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(field, value, f"must be an integer >= {low} {note}".strip())


def _one_of(field: str, value, allowed) -> None:
    if value not in allowed:
        _fail(field, value, f"must be one of {list(allowed)}")


def _get(config, field: str):
    for part in field.split("."):
        config = config[part]
    return config


def _boolean(field: str, value) -> None:
    if not isinstance(value, bool):
        _fail(field, value, "must be True or False")


def _check_model(prefix: str, m) -> None:
    """The shape fields of a model built or loaded from our own checkpoints."""
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads"):
        _integer_at_least(f"{prefix}.{field}", m[field], 1)
    _integer_at_least(f"{prefix}.intermediate_size", m.intermediate_size, 1)
    if m.head_dim is not None:
        _integer_at_least(f"{prefix}.head_dim", m.head_dim, 1, "(or None: hidden / heads)")
    if m.num_heads % m.num_kv_heads:
        _fail(f"{prefix}.num_kv_heads", m.num_kv_heads, f"must divide num_heads={m.num_heads}")
    _positive(f"{prefix}.rms_norm_eps", m.rms_norm_eps)
    _positive(f"{prefix}.rope_theta", m.rope_theta)
    for field in ("tie_embeddings", "qkv_bias"):
        _boolean(f"{prefix}.{field}", m[field])


def validate_config(config: ml_collections.ConfigDict, *, vocab_size: int | None = None) -> None:
    """Raise ValueError for the first bad value; `vocab_size` is the tokenizer's, when known."""
    _one_of("task", config.task, sorted(TASKS))
    _one_of("objective", config.objective, OBJECTIVES)
    compared_lmbdas(config)  # a comma list of lmbdas, GKD only
    _one_of("dtype", config.dtype, sorted(COMPUTE_DTYPES))
    check_memory(config)
    if config.max_new_tokens < 1:
        _fail("max_new_tokens", config.max_new_tokens, "must be >= 1")
    for field in ("steps", "batch_size", "grad_accum", "log_every", "data.max_prompt_len"):
        value = _get(config, field)
        if int(value) < 1:
            _fail(field, value, "must be >= 1")
    devices = jax.device_count()
    if config.batch_size % (config.grad_accum * devices):
        _fail(
            "batch_size",
            config.batch_size,
            f"must be divisible by grad_accum ({config.grad_accum}) x devices ({devices})",
        )
    if config.eval.batch_size % devices:
        _fail("eval.batch_size", config.eval.batch_size, f"must be divisible by {devices} devices")
    _one_of("sft_reduction", config.sft_reduction, REDUCTIONS)
    mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
    _integer_at_least("max_nonfinite_steps", config.max_nonfinite_steps, 1)
    _integer_at_least("stop_after_steps", config.stop_after_steps, 0, "(0 = off)")
    every = config.checkpoint.every_steps
    _integer_at_least("checkpoint.every_steps", every, 0, "(0 = only at the end)")
    _integer_at_least("checkpoint.keep", config.checkpoint.keep, 1)
    project = config.log.wandb_project
    if not isinstance(project, str) or any(c in project for c in WANDB_FORBIDDEN):
        _fail(
            "log.wandb_project",
            project,
            f"must be a W&B project name (none of {WANDB_FORBIDDEN}) or ''",
        )
    _positive("optim.learning_rate", config.optim.learning_rate)
    if config.objective == "gkd":
        g = config.gkd
        _in_unit_interval("gkd.lmbda", g.lmbda)
        _in_unit_interval("gkd.beta", g.beta)
        _one_of("gkd.divergence", g.divergence, DIVERGENCES)
        _one_of("gkd.lmbda_schedule", g.lmbda_schedule, LMBDA_SCHEDULES)
        _one_of("gkd.reduction", g.reduction, REDUCTIONS)
        _one_of("gkd.lmbda_mode", g.lmbda_mode, LMBDA_MODES)
        _one_of("gkd.loss_impl", g.loss_impl, LOSS_IMPLS)
        if g.loss_impl != "full" and g.divergence not in LOSS_FORM_DIVERGENCES:
            _fail(
                "gkd.loss_impl",
                g.loss_impl,
                f"supports gkd.divergence in {list(LOSS_FORM_DIVERGENCES)} only, not "
                f"{g.divergence!r}: use loss_impl='full'",
            )
        _integer_at_least("gkd.loss_chunk", g.loss_chunk, 0, "(0 = default)")
        hf = is_hf_source(config.teacher.checkpoint) or is_hf_source(config.init.checkpoint)
        if not hf and config.teacher.model.vocab_size != config.model.vocab_size:
            _fail(
                "teacher.model.vocab_size",
                config.teacher.model.vocab_size,
                f"differs from the student's config.model.vocab_size={config.model.vocab_size}:"
                " teacher and student must share one vocabulary",
            )
        _positive("gkd.teacher_temperature", g.teacher_temperature)
        _positive("gkd.loss_temperature", g.loss_temperature)
        _positive("sampling.temperature", config.sampling.temperature)
        if config.sampling.top_k < 0:
            _fail("sampling.top_k", config.sampling.top_k, "must be >= 0 (0 = off)")
        if not 0.0 < config.sampling.top_p <= 1.0:
            _fail("sampling.top_p", config.sampling.top_p, "must be in (0, 1] (1 = off)")
    _one_of("export.dtype", config.export.dtype, sorted(SAVE_DTYPES))
    for field in ("data.strict", "export.hf", "gkd.seq_kd"):
        _boolean(field, _get(config, field))
    paper = config.task in paper_tasks.DATASETS  # these also cut a prompt's end
    overflow = paper_tasks.PROMPT_OVERFLOW if paper else PROMPT_OVERFLOW
    _one_of("data.prompt_overflow", config.data.prompt_overflow, overflow)
    _one_of("data.source", config.data.source, ("", *SOURCES))
    if paper:
        paper_tasks.check_config(config)  # source vs train_file / eval_file
    for field in ("seed", "data.eval_seed", "optim.warmup_steps", "eval.every_steps"):
        _integer_at_least(field, _get(config, field), 0)
    _integer_at_least("data.train_seed", config.data.train_seed, -1, "(-1 = config.seed)")
    for field in ("data.train_examples", "eval.num_examples", "eval.batch_size"):
        _integer_at_least(field, _get(config, field), 1)
    e = config.eval
    _one_of("eval.decoding", e.decoding, DECODINGS)
    _integer_at_least("eval.beam_size", e.beam_size, 1)
    lp = e.length_penalty
    if isinstance(lp, bool) or not isinstance(lp, int | float) or not math.isfinite(lp):
        _fail("eval.length_penalty", lp, "must be a finite number (0 = no length penalty)")
    _one_of("eval.length_penalty_form", e.length_penalty_form, LENGTH_PENALTIES)
    _one_of("eval.early_stopping", e.early_stopping, sorted(EARLY_STOPPING))
    _positive("eval.temperature", e.temperature)
    if not isinstance(config.sampling.top_k, int) or isinstance(config.sampling.top_k, bool):
        _fail("sampling.top_k", config.sampling.top_k, "must be an integer >= 0 (0 = off)")
    o = config.optim
    for field in ("optim.b1", "optim.b2"):
        if not 0.0 <= _get(config, field) < 1.0:
            _fail(field, _get(config, field), "must be in [0, 1)")
    _in_unit_interval("optim.final_lr_fraction", o.final_lr_fraction)
    if not o.grad_clip >= 0:
        _fail("optim.grad_clip", o.grad_clip, "must be >= 0 (0 = no clipping)")
    _one_of("optim.name", o.name, OPTIMIZERS)
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    _integer_at_least("optim.cooldown_steps", o.cooldown_steps, 0, "(0 = no cooldown)")
    if o.cooldown_steps > config.steps:
        _fail("optim.cooldown_steps", o.cooldown_steps, f"must be <= steps ({config.steps})")
    if not 0.0 <= config.dropout_rate < 1.0:
        _fail("dropout_rate", config.dropout_rate, "must be in [0, 1)")
    if not o.weight_decay >= 0:
        _fail("optim.weight_decay", o.weight_decay, "must be >= 0")
    if not is_hf_source(config.init.checkpoint):
        _check_model("model", config.model)
    if config.objective == "gkd" and not is_hf_source(config.teacher.checkpoint):
        _check_model("teacher.model", config.teacher.model)
    student_hf = is_hf_source(config.init.checkpoint)
    if vocab_size is not None and not student_hf and config.model.vocab_size < vocab_size:
        _fail(
            "model.vocab_size",
            config.model.vocab_size,
            f"is smaller than the tokenizer's vocabulary ({vocab_size})",
        )


def check_memory(config: ml_collections.ConfigDict) -> None:
    """The memory fields: parameter dtypes and rematerialization (config_defaults, README)."""
    _one_of("param_dtype", config.param_dtype, sorted(COMPUTE_DTYPES))
    _one_of("teacher_param_dtype", config.teacher_param_dtype, sorted(COMPUTE_DTYPES))
    _one_of("remat", config.remat, REMAT_POLICIES)
