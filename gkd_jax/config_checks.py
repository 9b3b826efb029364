"""Start-up checks: a bad config value fails here, naming the field and the fix, before any
compilation or data loading starts."""

from __future__ import annotations

import jax
import ml_collections

from gkd_jax.data.tasks import TASKS
from gkd_jax.losses import DIVERGENCES, REDUCTIONS
from gkd_jax.models import COMPUTE_DTYPES
from gkd_jax.models.hf import SAVE_DTYPES, is_hf_source
from gkd_jax.schedules import LMBDA_SCHEDULES

OBJECTIVES = ("gkd", "sft")
LMBDA_MODES = ("batch", "example")


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


def validate_config(config: ml_collections.ConfigDict, *, vocab_size: int | None = None) -> None:
    """Raise ValueError for the first bad value; `vocab_size` is the tokenizer's, when known."""
    _one_of("task", config.task, sorted(TASKS))
    _one_of("objective", config.objective, OBJECTIVES)
    _one_of("dtype", config.dtype, sorted(COMPUTE_DTYPES))
    if config.max_new_tokens < 1:
        _fail("max_new_tokens", config.max_new_tokens, "must be >= 1")
    for field in ("steps", "batch_size", "grad_accum", "log_every", "data.max_prompt_len"):
        value = config
        for part in field.split("."):
            value = value[part]
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
    _integer_at_least("max_nonfinite_steps", config.max_nonfinite_steps, 1)
    _integer_at_least("stop_after_steps", config.stop_after_steps, 0, "(0 = off)")
    every = config.checkpoint.every_steps
    _integer_at_least("checkpoint.every_steps", every, 0, "(0 = only at the end)")
    _integer_at_least("checkpoint.keep", config.checkpoint.keep, 1)
    _positive("optim.learning_rate", config.optim.learning_rate)
    if config.objective == "gkd":
        g = config.gkd
        _in_unit_interval("gkd.lmbda", g.lmbda)
        _in_unit_interval("gkd.beta", g.beta)
        _one_of("gkd.divergence", g.divergence, DIVERGENCES)
        _one_of("gkd.lmbda_schedule", g.lmbda_schedule, LMBDA_SCHEDULES)
        _one_of("gkd.reduction", g.reduction, REDUCTIONS)
        _one_of("gkd.lmbda_mode", g.lmbda_mode, LMBDA_MODES)
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
    if not isinstance(config.data.strict, bool):
        _fail("data.strict", config.data.strict, "must be True or False")
    student_hf = is_hf_source(config.init.checkpoint)
    if vocab_size is not None and not student_hf and config.model.vocab_size < vocab_size:
        _fail(
            "model.vocab_size",
            config.model.vocab_size,
            f"is smaller than the tokenizer's vocabulary ({vocab_size})",
        )
