"""Supervised starting point of the arith student (~60k parameters, 48 wide, 2 layers).

    python -m gkd_jax.train --config=configs/arith_student.py --workdir=/tmp/arith-student

The paper starts GKD from a supervised fine-tuned student; `builtin:arith/student_sft` was made by
exactly this command.
"""

from gkd_jax.config_defaults import (
    ARITH_STUDENT,
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
    c.model = model_config(**ARITH_STUDENT)
    c.steps = 1500
    c.batch_size = 64
    c.log_every = 50
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.01
    if opts["smoke"]:
        shrink_for_smoke(c)
    return c
