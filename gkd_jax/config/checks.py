"""Start-up checks: a bad config value fails here, naming the field and the fix, before any
compilation or data loading starts."""

from __future__ import annotations

import math
import re

import jax
import ml_collections

from gkd_jax.data import paper_tasks
from gkd_jax.data.records import PROMPT_OVERFLOW
from gkd_jax.data.resources import is_hf_source
from gkd_jax.data.sources import SOURCES
from gkd_jax.data.tasks import TASKS
from gkd_jax.decoding.beam_search import LENGTH_PENALTIES
from gkd_jax.evaluation.comparison import compared_lmbdas
from gkd_jax.evaluation.evaluator import DECODINGS, EARLY_STOPPING, EVAL_DIVERGENCES, TEACHER_FORCED
from gkd_jax.models import COMPUTE_DTYPES
from gkd_jax.models.hf import SAVE_DTYPES
from gkd_jax.models.prune import parse_layers, pruned_config
from gkd_jax.models.remat import REMAT_POLICIES
from gkd_jax.models.sources import source_model_config
from gkd_jax.models.t5 import T5Config
from gkd_jax.objectives.cross_tokenizer import CROSS_TOKENIZER_OBJECTIVES
from gkd_jax.objectives.losses import DIVERGENCES, REDUCTIONS
from gkd_jax.objectives.policy_gradient import (
    BASELINES,
    KL_TO_START,
    SAMPLED_DIVERGENCES,
    policy_gradient,
)
from gkd_jax.objectives.rewards import get_reward
from gkd_jax.parallel.sharding import mesh_shape
from gkd_jax.training.optim import OPTIMIZERS, SCHEDULES
from gkd_jax.training.schedules import LMBDA_SCHEDULES
from gkd_jax.training.step import LOSS_FORM_DIVERGENCES, LOSS_IMPLS, resolved_loss_impl
from gkd_jax.training.teacher_cache_store import read_manifest

OBJECTIVES = ("gkd", "sft")
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


def check_model_shape(prefix: str, m) -> None:
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
    """Raise ValueError for the first bad value; `vocab_size` is the tokenizer's, when known.
    One checker per section of the config, in this order."""
    devices = jax.device_count()
    check_run(config, devices)
    check_checkpoint(config)
    check_log(config)
    check_gkd(config)
    check_cross_tokenizer(config)
    check_sampling(config)
    check_rl(config)
    check_sparse_teacher(config)
    check_export(config)
    check_data(config)
    check_eval(config, devices)
    check_optim(config)
    check_lora(config)
    check_init_layers(config)
    check_models(config, vocab_size)


def check_run(config: ml_collections.ConfigDict, devices: int) -> None:
    """The top-level fields: task, objective, dtype, steps and batch shape, mesh, seed."""
    _one_of("task", config.task, sorted(TASKS))
    _one_of("objective", config.objective, OBJECTIVES)
    compared_lmbdas(config)  # a comma list of lmbdas, GKD only
    _one_of("dtype", config.dtype, sorted(COMPUTE_DTYPES))
    check_memory(config)
    if config.max_new_tokens < 1:
        _fail("max_new_tokens", config.max_new_tokens, "must be >= 1")
    for field in ("steps", "batch_size", "grad_accum", "log_every"):
        value = _get(config, field)
        if int(value) < 1:
            _fail(field, value, "must be >= 1")
    if config.batch_size % (config.grad_accum * devices):
        _fail(
            "batch_size",
            config.batch_size,
            f"must be divisible by grad_accum ({config.grad_accum}) x devices ({devices})",
        )
    _one_of("sft_reduction", config.sft_reduction, REDUCTIONS)
    mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
    _integer_at_least("max_nonfinite_steps", config.max_nonfinite_steps, 1)
    _integer_at_least("stop_after_steps", config.stop_after_steps, 0, "(0 = off)")
    _integer_at_least("seed", config.seed, 0)
    if not 0.0 <= config.dropout_rate < 1.0:
        _fail("dropout_rate", config.dropout_rate, "must be in [0, 1)")


def check_checkpoint(config: ml_collections.ConfigDict) -> None:
    every = config.checkpoint.every_steps
    _integer_at_least("checkpoint.every_steps", every, 0, "(0 = only at the end)")
    _integer_at_least("checkpoint.keep", config.checkpoint.keep, 1)


def check_log(config: ml_collections.ConfigDict) -> None:
    project = config.log.wandb_project
    if not isinstance(project, str) or any(c in project for c in WANDB_FORBIDDEN):
        _fail(
            "log.wandb_project",
            project,
            f"must be a W&B project name (none of {WANDB_FORBIDDEN}) or ''",
        )


def check_gkd(config: ml_collections.ConfigDict) -> None:
    """config.gkd (GKD runs only, but for gkd.seq_kd) and the teacher's vocabulary."""
    _boolean("gkd.seq_kd", config.gkd.seq_kd)
    if config.objective != "gkd":
        return
    g = config.gkd
    _in_unit_interval("gkd.lmbda", g.lmbda)
    _in_unit_interval("gkd.beta", g.beta)
    _one_of("gkd.divergence", g.divergence, (*DIVERGENCES, *SAMPLED_DIVERGENCES))
    _one_of("gkd.lmbda_schedule", g.lmbda_schedule, LMBDA_SCHEDULES)
    _one_of("gkd.reduction", g.reduction, REDUCTIONS)
    _one_of("gkd.lmbda_mode", g.lmbda_mode, LMBDA_MODES)
    _one_of("gkd.loss_impl", g.loss_impl, LOSS_IMPLS)
    if g.loss_impl not in ("auto", "full") and g.divergence not in LOSS_FORM_DIVERGENCES:
        _fail(
            "gkd.loss_impl",
            g.loss_impl,
            f"supports gkd.divergence in {list(LOSS_FORM_DIVERGENCES)} only, not "
            f"{g.divergence!r}: use loss_impl='full'",
        )
    _integer_at_least("gkd.loss_chunk", g.loss_chunk, 0, "(0 = default)")
    hf = is_hf_source(config.teacher.checkpoint) or _student_shape_from_source(config)
    # A teacher with its own tokenizer (gkd.cross_tokenizer) has its own vocabulary size.
    own_vocab = bool(config.teacher.get("tokenizer", ""))
    if not hf and not own_vocab and config.teacher.model.vocab_size != config.model.vocab_size:
        _fail(
            "teacher.model.vocab_size",
            config.teacher.model.vocab_size,
            f"differs from the student's config.model.vocab_size={config.model.vocab_size}:"
            " teacher and student must share one vocabulary",
        )
    _positive("gkd.teacher_temperature", g.teacher_temperature)
    _positive("gkd.loss_temperature", g.loss_temperature)


def check_cross_tokenizer(config: ml_collections.ConfigDict) -> None:
    """teacher.tokenizer and gkd.cross_tokenizer (objectives/cross_tokenizer.py): the values,
    then what a cross-tokenizer run needs of the rest (check_cross_tokenizer_run)."""
    g, tok = config.gkd, config.teacher.get("tokenizer", "")
    if not isinstance(tok, str):
        _fail("teacher.tokenizer", tok, "must be a tokenizer dir or '' (the student's)")
    if config.init.get("tokenizer", ""):
        why = "must be '': the student's tokenizer is config.tokenizer"
        _fail("init.tokenizer", config.init.tokenizer, why)
    _one_of("gkd.cross_tokenizer", g.cross_tokenizer, ("", *CROSS_TOKENIZER_OBJECTIVES))
    w = g.uld_weight
    if isinstance(w, bool) or not isinstance(w, int | float) or not (math.isfinite(w) and w >= 0):
        _fail("gkd.uld_weight", w, "must be a finite number >= 0 (0 = hybrid_uld is matched_jsd)")
    _integer_at_least("gkd.teacher_max_new_tokens", g.teacher_max_new_tokens, 0, "(0 = auto)")
    p_t = config.data.teacher_max_prompt_len
    _integer_at_least("data.teacher_max_prompt_len", p_t, 0, "(0 = data.max_prompt_len)")
    if config.objective != "gkd":
        if g.cross_tokenizer:
            _fail("gkd.cross_tokenizer", g.cross_tokenizer, "needs objective='gkd' (a teacher)")
        return
    if tok and not g.cross_tokenizer:
        _fail(
            "teacher.tokenizer",
            tok,
            "is read only by gkd.cross_tokenizer: set gkd.cross_tokenizer to one of "
            f"{list(CROSS_TOKENIZER_OBJECTIVES)} to distill across tokenizers, or "
            "teacher.tokenizer='' for a teacher that shares the student's vocabulary",
        )
    if g.cross_tokenizer:
        check_cross_tokenizer_run(config)


def check_cross_tokenizer_run(config: ml_collections.ConfigDict) -> None:
    """A cross-tokenizer run: a teacher tokenizer, a divergence the objective computes, a live
    teacher on its own ids, and decoder-only models."""
    g, name = config.gkd, config.gkd.cross_tokenizer
    if not config.teacher.get("tokenizer", ""):
        _fail(
            "gkd.cross_tokenizer",
            name,
            "needs teacher.tokenizer: the teacher's tokenizer dir (or its model dir)",
        )
    pg = "policy gradient: gkd.lmbda=1, plain sampling, gkd.loss_impl 'full'/'auto', dropout 0"
    if name == "chunk_rkl" and g.divergence not in SAMPLED_DIVERGENCES:
        _fail(
            "gkd.divergence",
            g.divergence,
            f"must be 'sampled_rkl' with gkd.cross_tokenizer='chunk_rkl' (the per-chunk "
            f"log-ratio trained by {pg}, as sampled_rkl per token)",
        )
    if name != "chunk_rkl" and g.divergence not in LOSS_FORM_DIVERGENCES:
        _fail(
            "gkd.divergence",
            g.divergence,
            f"must be one of {list(LOSS_FORM_DIVERGENCES)} with gkd.cross_tokenizer={name!r} "
            "(the generalized JSD at gkd.beta; fkl = beta 0, rkl = beta 1, on the matched "
            "vocabulary + one tail bin); 'sampled_rkl' goes with cross_tokenizer='chunk_rkl'",
        )
    why = f"with gkd.cross_tokenizer={name!r}"
    for field, value, fix in (
        ("gkd.teacher_cache", g.teacher_cache, "'' (a cache holds the teacher on its own ids)"),
        ("gkd.teacher_top_k", g.teacher_top_k, "0 (the matched vocabulary needs every id)"),
        ("gkd.seq_kd", g.seq_kd, "False (the teacher would sample in its own vocabulary)"),
        ("eval.divergence_to_teacher", config.eval.divergence_to_teacher, "'' (per token)"),
    ):
        if value:
            _fail(field, value, f"must be {fix} {why}: not implemented across tokenizers")
    if g.loss_impl not in ("auto", "full"):
        _fail("gkd.loss_impl", g.loss_impl, f"must be 'full' or 'auto' {why} (full logits)")
    for field in ("teacher.checkpoint", "init.checkpoint"):
        if _encoder_decoder(_get(config, field)):
            _fail(
                field,
                _get(config, field),
                f"is an encoder-decoder (T5) model: {why}, both models must be decoder-only "
                "(cross-tokenizer T5 is not implemented yet)",
            )


def _encoder_decoder(checkpoint_spec: str) -> bool:
    """Whether a model source is a T5, read from its config without weights; False where there
    is nothing to read yet (a model its recipe trains first: a decoder of config.model)."""
    if not checkpoint_spec:
        return False
    try:
        return isinstance(source_model_config(checkpoint_spec), T5Config)
    except (FileNotFoundError, ValueError, OSError):
        return False


def check_sampling(config: ml_collections.ConfigDict) -> None:
    """config.sampling: top_k an integer always; the rest for GKD runs, which sample."""
    s = config.sampling
    if not isinstance(s.top_k, int) or isinstance(s.top_k, bool):
        _fail("sampling.top_k", s.top_k, "must be an integer >= 0 (0 = off)")
    if config.objective != "gkd":
        return
    _positive("sampling.temperature", s.temperature)
    if s.top_k < 0:
        _fail("sampling.top_k", s.top_k, "must be >= 0 (0 = off)")
    if not 0.0 < s.top_p <= 1.0:
        _fail("sampling.top_p", s.top_p, "must be in (0, 1] (1 = off)")


def check_export(config: ml_collections.ConfigDict) -> None:
    _one_of("export.dtype", config.export.dtype, sorted(SAVE_DTYPES))
    _boolean("export.hf", config.export.hf)


def check_data(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if int(d.max_prompt_len) < 1:
        _fail("data.max_prompt_len", d.max_prompt_len, "must be >= 1")
    _boolean("data.strict", d.strict)
    paper = config.task in paper_tasks.DATASETS  # these also cut a prompt's end
    overflow = paper_tasks.PROMPT_OVERFLOW if paper else PROMPT_OVERFLOW
    _one_of("data.prompt_overflow", d.prompt_overflow, overflow)
    _one_of("data.source", d.source, ("", *SOURCES))
    if paper:
        paper_tasks.check_config(config)  # source vs train_file / eval_file
    _integer_at_least("data.eval_seed", d.eval_seed, 0)
    _integer_at_least("data.train_seed", d.train_seed, -1, "(-1 = config.seed)")
    _integer_at_least("data.train_examples", d.train_examples, 1)


def check_eval(config: ml_collections.ConfigDict, devices: int) -> None:
    e = config.eval
    _integer_at_least("eval.every_steps", e.every_steps, 0)
    for field in ("num_examples", "batch_size"):
        _integer_at_least(f"eval.{field}", e[field], 1)
    if e.batch_size % devices:
        _fail("eval.batch_size", e.batch_size, f"must be divisible by {devices} devices")
    _one_of("eval.decoding", e.decoding, DECODINGS)
    _integer_at_least("eval.beam_size", e.beam_size, 1)
    lp = e.length_penalty
    if isinstance(lp, bool) or not isinstance(lp, int | float) or not math.isfinite(lp):
        _fail("eval.length_penalty", lp, "must be a finite number (0 = no length penalty)")
    _one_of("eval.length_penalty_form", e.length_penalty_form, LENGTH_PENALTIES)
    _one_of("eval.early_stopping", e.early_stopping, sorted(EARLY_STOPPING))
    _positive("eval.temperature", e.temperature)
    _one_of("eval.divergence_to_teacher", e.divergence_to_teacher, EVAL_DIVERGENCES)
    _one_of("eval.teacher_forced", e.teacher_forced, TEACHER_FORCED)
    if e.divergence_to_teacher and (config.objective != "gkd" or config.gkd.teacher_cache):
        _fail(
            "eval.divergence_to_teacher",
            e.divergence_to_teacher,
            "needs the live teacher: objective 'gkd' without gkd.teacher_cache (or '' = off)",
        )


def check_optim(config: ml_collections.ConfigDict) -> None:
    o = config.optim
    _positive("optim.learning_rate", o.learning_rate)
    _integer_at_least("optim.warmup_steps", o.warmup_steps, 0)
    for field in ("b1", "b2"):
        if not 0.0 <= o[field] < 1.0:
            _fail(f"optim.{field}", o[field], "must be in [0, 1)")
    _in_unit_interval("optim.final_lr_fraction", o.final_lr_fraction)
    if not o.grad_clip >= 0:
        _fail("optim.grad_clip", o.grad_clip, "must be >= 0 (0 = no clipping)")
    _one_of("optim.name", o.name, OPTIMIZERS)
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    _integer_at_least("optim.cooldown_steps", o.cooldown_steps, 0, "(0 = no cooldown)")
    if o.cooldown_steps > config.steps:
        _fail("optim.cooldown_steps", o.cooldown_steps, f"must be <= steps ({config.steps})")
    if not o.weight_decay >= 0:
        _fail("optim.weight_decay", o.weight_decay, "must be >= 0")


def check_lora(config: ml_collections.ConfigDict) -> None:
    """config.lora (models/lora.py). What only the student's parameters show (a regex that
    matches no linear layer, a rank above a layer's dimensions) is checked when the adapters
    are added (lora.add_lora), still before anything compiles."""
    lo = config.lora
    _integer_at_least("lora.rank", lo.rank, 0, "(0 = off)")
    if isinstance(lo.alpha, bool) or not isinstance(lo.alpha, (int, float)):
        _fail("lora.alpha", lo.alpha, "must be a number > 0 (the update's scale is alpha / rank)")
    if not (math.isfinite(lo.alpha) and lo.alpha > 0):
        _fail("lora.alpha", lo.alpha, "must be finite and > 0 (the scale is alpha / rank)")
    if not isinstance(lo.targets, str) or not lo.targets:
        _fail("lora.targets", lo.targets, "must be a non-empty regex over layer paths")
    try:
        pattern = re.compile(lo.targets)
    except re.error as e:
        _fail("lora.targets", lo.targets, f"is not a valid regex ({e})")
    if not lo.rank:
        return
    if config.optim.name == "adafactor":
        _fail(
            "optim.name",
            "adafactor",
            "cannot train LoRA adapters: Adafactor scales each update by its parameter's RMS "
            "(at least 1e-3), and B starts at zero, so B barely moves; use optim.name='adamw'",
        )
    if resolved_loss_impl(config) == "fused" and pattern.search("lm_head"):
        _fail(
            "lora.targets",
            lo.targets,
            "adapts lm_head, but gkd.loss_impl='fused' multiplies by the bare output kernel "
            "(LMFunctions.unembedding); use loss_impl='chunked', or leave lm_head out",
        )


def _student_shape_from_source(config: ml_collections.ConfigDict) -> bool:
    """Whether the student's shape is its source's, not config.model's: a Hugging Face start,
    or one cut from a source's layers (config.init.layers)."""
    layers = config.init.get("layers", "")
    return is_hf_source(config.init.checkpoint) or bool(layers and str(layers).strip())


def check_init_layers(config: ml_collections.ConfigDict) -> None:
    """config.init.layers (models/prune.py): well formed, a source to cut (init.checkpoint, a
    decoder), every index inside it. The source's config.json or our checkpoint's metadata is
    read; its weights are not."""
    if config.teacher.get("layers", ""):
        _fail(
            "teacher.layers",
            config.teacher.layers,
            "must be '': a layer list makes the student (config.init.layers, with "
            "config.init.checkpoint = the teacher's checkpoint)",
        )
    spec = config.init.get("layers", "")
    try:
        layers = parse_layers(spec)
    except ValueError as e:
        _fail("init.layers", spec, str(e))
    if not layers:
        return
    if not config.init.checkpoint:
        _fail(
            "init.layers",
            spec,
            "needs config.init.checkpoint: the model whose layers the student is made of "
            "(e.g. the teacher's Hugging Face directory, or our checkpoint)",
        )
    try:
        source = source_model_config(config.init.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        _fail("init.layers", spec, f"cannot read config.init.checkpoint's config: {e}")
    try:
        pruned_config(source, layers)
    except ValueError as e:
        _fail("init.layers", spec, f"{e} (config.init.checkpoint={config.init.checkpoint!r})")


def check_models(config: ml_collections.ConfigDict, vocab_size: int | None) -> None:
    """The student's and (GKD) the teacher's shapes, unless they come from Hugging Face; the
    student's vocabulary holds the tokenizer's (`vocab_size`, when known)."""
    student_hf = _student_shape_from_source(config)
    if not student_hf:
        check_model_shape("model", config.model)
    if config.objective == "gkd" and not is_hf_source(config.teacher.checkpoint):
        check_model_shape("teacher.model", config.teacher.model)
    if vocab_size is not None and not student_hf and config.model.vocab_size < vocab_size:
        _fail(
            "model.vocab_size",
            config.model.vocab_size,
            f"is smaller than the tokenizer's vocabulary ({vocab_size})",
        )


def check_rl(config: ml_collections.ConfigDict) -> None:
    """config.rl and what the policy-gradient step (rl_step.py) needs of the rest: exact
    samples of the current student, scored in full."""
    r = config.rl
    check_rl_values(r)
    if r.alpha < 1 and config.objective != "gkd":
        _fail("rl.alpha", r.alpha, "needs objective='gkd' (a teacher); set rl.alpha=1 for SFT")
    if not policy_gradient(config):
        if r.kl_to_start == "on":
            _fail(
                "rl.kl_to_start",
                r.kl_to_start,
                "is reported by the policy-gradient step only (rl.alpha < 1 or "
                "gkd.divergence='sampled_rkl'); use 'auto' or 'off'",
            )
        return
    why = "(policy gradient: rl.alpha < 1 or gkd.divergence='sampled_rkl')"
    check_rl_batches(config, why)
    check_exact_samples(config, why)


def check_rl_values(r: ml_collections.ConfigDict) -> None:
    """config.rl's fields on their own: ranges, choices, and a reward that resolves."""
    alpha = r.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        _fail("rl.alpha", alpha, "must be in [0, 1] (1 = pure GKD, 0 = pure RL)")
    _integer_at_least("rl.num_samples", r.num_samples, 1)
    _one_of("rl.baseline", r.baseline, BASELINES)
    _boolean("rl.normalize_advantages", r.normalize_advantages)
    if not 0.0 <= r.clip_ratio < 1.0:
        _fail("rl.clip_ratio", r.clip_ratio, "must be in [0, 1) (0 = no clipping)")
    _in_unit_interval("rl.gamma", r.gamma)
    _one_of("rl.kl_to_start", r.kl_to_start, KL_TO_START)
    if not isinstance(r.reward, str):
        _fail("rl.reward", r.reward, "must be a reward name or 'module:attribute' ('' = none)")
    if r.reward:  # resolved now, so a typo fails before anything compiles
        try:
            get_reward(r.reward)
        except ValueError as e:
            _fail("rl.reward", r.reward, str(e))


def check_rl_batches(config: ml_collections.ConfigDict, why: str) -> None:
    """A policy-gradient run's rewards and batches: a reward to learn from (rl.alpha < 1),
    whole groups of rl.num_samples samples per prompt, and no lmbda comparisons."""
    r = config.rl
    if r.alpha < 1:
        if not r.reward:
            _fail(
                "rl.reward",
                r.reward,
                "must name a reward when rl.alpha < 1, e.g. "
                "'exact_answer' (rewards.REWARDS) or 'my_pkg.rewards:fn'",
            )
        if r.baseline == "loo" and r.num_samples < 2:
            _fail(
                "rl.num_samples",
                r.num_samples,
                "must be >= 2 for rl.baseline='loo' (or use rl.baseline='batch')",
            )
    if config.batch_size % r.num_samples:
        _fail(
            "batch_size",
            config.batch_size,
            f"must be divisible by rl.num_samples ({r.num_samples}) {why}",
        )
    if config.compare_lmbdas:  # the comparisons re-run this config at other lmbdas
        _fail(
            "compare_lmbdas",
            config.compare_lmbdas,
            f"compares lmbdas of GKD runs, and this run is not one {why}: set "
            "compare_lmbdas='' (e.g. --config.compare_lmbdas= with configs/arith.py)",
        )


def check_exact_samples(config: ml_collections.ConfigDict, why: str) -> None:
    """A policy-gradient run's samples are the current student's own, scored in full: the
    score-function estimator differentiates their exact log-probabilities."""
    g, s = config.gkd, config.sampling
    if g.lmbda != 1.0 or g.lmbda_schedule != "constant":
        _fail(
            "gkd.lmbda",
            g.lmbda,
            f"must be 1 with lmbda_schedule='constant' {why}: the "
            "score-function estimator needs the student's own samples",
        )
    for field, plain in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0)):
        if s[field] != plain:
            _fail(
                f"sampling.{field}",
                s[field],
                f"must be {plain} {why}: the samples must come from the student's own "
                "distribution, whose log-probabilities the estimator differentiates",
            )
    if g.loss_impl not in ("auto", "full"):
        _fail("gkd.loss_impl", g.loss_impl, f"must be 'full' or 'auto' {why}")
    if config.dropout_rate != 0:
        _fail("dropout_rate", config.dropout_rate, f"must be 0 {why}")
    if g.divergence in SAMPLED_DIVERGENCES and g.loss_temperature != 1.0:
        _fail(
            "gkd.loss_temperature",
            g.loss_temperature,
            "must be 1 with gkd.divergence='sampled_rkl' (the policy is the student at "
            "temperature 1; gkd.teacher_temperature still sharpens the teacher)",
        )


def check_sparse_teacher(config: ml_collections.ConfigDict) -> None:
    """gkd.teacher_top_k and gkd.teacher_cache (sparse_teacher.py, teacher_cache_store.py): a K the
    vocabulary holds, the full loss form, and a cache only where no teacher is needed."""
    g = config.gkd
    k, cache = g.teacher_top_k, g.teacher_cache
    _integer_at_least("gkd.teacher_top_k", k, 0, "(0 = the full teacher)")
    if not isinstance(cache, str):
        _fail("gkd.teacher_cache", cache, "must be a teacher cache directory or '' (none)")
    if not k and not cache:
        return
    if config.objective != "gkd":
        field, value = ("gkd.teacher_top_k", k) if k else ("gkd.teacher_cache", cache)
        _fail(field, value, "needs objective='gkd' (a teacher); set it to 0 / '' for SFT")
    if not _student_shape_from_source(config) and k > config.model.vocab_size:
        _fail(
            "gkd.teacher_top_k",
            k,
            f"exceeds the vocabulary (model.vocab_size={config.model.vocab_size}): use K <= "
            f"{config.model.vocab_size}, or 0 for the full teacher",
        )
    if g.loss_impl not in ("auto", "full"):
        _fail(
            "gkd.loss_impl",
            g.loss_impl,
            "must be 'full' or 'auto' with gkd.teacher_top_k > 0 (the sparse loss holds no "
            "[B, N, V] teacher logits: nothing for the chunked/fused forms to save)",
        )
    if g.divergence in SAMPLED_DIVERGENCES:
        _fail(
            "gkd.divergence",
            g.divergence,
            "needs the teacher's log-probability of every sampled token, which a top-K teacher "
            "lacks: use divergence 'rkl' with gkd.teacher_top_k, or teacher_top_k=0",
        )
    if not cache:
        return
    manifest = read_manifest(cache)  # names the directory and the command that makes it
    if not k:
        _fail(
            "gkd.teacher_top_k",
            k,
            f"must be the cache's K with gkd.teacher_cache={cache!r} (its manifest.json says)",
        )
    why = "with gkd.teacher_cache: the cache holds the teacher on the dataset's targets only"
    if g.lmbda != 0 or g.lmbda_schedule != "constant":
        _fail(
            "gkd.lmbda",
            g.lmbda,
            f"must be 0 with lmbda_schedule='constant' {why} (on-policy samples need the live "
            "teacher: set gkd.teacher_cache='')",
        )
    if g.seq_kd:
        _fail("gkd.seq_kd", g.seq_kd, f"must be False {why} (SeqKD samples the live teacher)")
    if policy_gradient(config):
        _fail("rl.alpha", config.rl.alpha, f"must be 1 {why} (policy gradient samples)")
    if config.compare_lmbdas:
        _fail(
            "compare_lmbdas",
            config.compare_lmbdas,
            f"must be '' {why} (the compared runs would sample); run them with the live teacher",
        )
    if manifest["k"] != k:
        _fail(
            "gkd.teacher_top_k",
            k,
            f"differs from the cache's K={manifest['k']} ({cache}): set "
            f"gkd.teacher_top_k={manifest['k']}, or rebuild the cache with K={k}",
        )


def check_memory(config: ml_collections.ConfigDict) -> None:
    """The memory fields: parameter dtypes and rematerialization (config/defaults.py,
    docs/guides/memory.md)."""
    _one_of("param_dtype", config.param_dtype, sorted(COMPUTE_DTYPES))
    _one_of("teacher_param_dtype", config.teacher_param_dtype, sorted(COMPUTE_DTYPES))
    _one_of("remat", config.remat, REMAT_POLICIES)
    percent = config.sampler_hbm_percent
    _integer_at_least("sampler_hbm_percent", percent, 0, "(0 = automatic)")
    if percent > 100:
        _fail("sampler_hbm_percent", percent, "is a percent of HBM: 0 (automatic) to 100")
