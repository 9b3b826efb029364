"""The student's optimizer and learning-rate schedule, from `config.optim` and `config.steps`.

optim.name:
  "adamw":     AdamW (b1, b2, weight_decay): the default, for the small built-in tasks.
  "adafactor": Adafactor as T5 trains with it (the GKD paper's optimizer for every run):
               optax.adafactor with the defaults of T5X's Adafactor (factored second moments
               for matrices whose two largest dims are >= 128, decay rate 0.8 (beta2_t =
               1 - t^-0.8), no momentum, update clipping at block RMS 1, updates scaled by
               the parameter's RMS (min 1e-3), epsilon 1e-30) and the schedule below as the
               learning rate: no relative step size. b1/b2 are AdamW's only; weight_decay
               > 0 becomes Adafactor's decoupled weight_decay_rate.
optim.schedule:
  "cosine": linear warmup over warmup_steps, cosine decay to learning_rate * final_lr_fraction
            at config.steps.
  "linear": linear warmup over warmup_steps, constant, then linear to 0 over the last
            cooldown_steps (0 = no cooldown): the paper's recipe (appendix A).
optim.grad_clip > 0 clips the global gradient norm before either optimizer; 0 turns it off
(T5X's Adafactor runs without it, clipping each update by its RMS instead).

Schedules take optax's update count (0 for the first update), as every optax schedule does.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "linear")


def linear_warmup_cooldown(
    peak: float, warmup_steps: int, cooldown_steps: int, total_steps: int
) -> optax.Schedule:
    """lr(t) = peak * min(1, t / warmup) * min(1, (total - t) / cooldown), t the update count;
    a factor whose length is 0 is 1 (no warmup / no cooldown)."""

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        lr = jnp.asarray(peak, jnp.float32)
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, t / warmup_steps)
        if cooldown_steps:
            lr = lr * jnp.clip((total_steps - t) / cooldown_steps, 0.0, 1.0)
        return lr

    return schedule


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    o = config.optim
    if o.schedule == "linear":
        return linear_warmup_cooldown(
            o.learning_rate, o.warmup_steps, o.cooldown_steps, config.steps
        )
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=o.learning_rate,
            warmup_steps=o.warmup_steps,
            decay_steps=max(config.steps, o.warmup_steps + 1),
            end_value=o.learning_rate * o.final_lr_fraction,
        )
    raise ValueError(f"config.optim.schedule={o.schedule!r}: must be one of {list(SCHEDULES)}")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Gradient clipping (unless optim.grad_clip is 0), then optim.name with the schedule."""
    o = config.optim
    schedule = make_schedule(config)
    if o.name == "adamw":
        tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    elif o.name == "adafactor":
        tx = optax.adafactor(
            schedule,
            min_dim_size_to_factor=128,
            decay_rate=0.8,
            multiply_by_parameter_scale=True,
            clipping_threshold=1.0,
            momentum=None,
            weight_decay_rate=o.weight_decay or None,
            eps=1e-30,
            factored=True,
        )
    else:
        raise ValueError(f"config.optim.name={o.name!r}: must be one of {list(OPTIMIZERS)}")
    if o.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
