"""Supervised training of the arith teacher (~0.8M parameters, character level).

    python -m gkd_jax.train --config=configs/arith_teacher.py --workdir=/tmp/arith-teacher

The shipped `builtin:arith/teacher` checkpoint was made by exactly this command (then copied to
gkd_jax/assets/arith/teacher with `cp -r /tmp/arith-teacher/model ...`).
"""

from gkd_jax.config_defaults import (
    ARITH_TEACHER,
    arith_options,
    base_config,
    finite_training_set,
    model_config,
    shrink_for_smoke,
)


def get_config(arg: str = ""):
    opts = arith_options(arg)
    c = base_config()
    finite_training_set(c, opts["n"])
    c.objective = "sft"
    c.model = model_config(**ARITH_TEACHER)
    c.steps = 1500
    c.batch_size = 64
    c.log_every = 50
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.01
    if opts["smoke"]:
        shrink_for_smoke(c)
    return c
