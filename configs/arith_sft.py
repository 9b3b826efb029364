"""Supervised training of the arith models: the teacher (~0.8M parameters) and the student's
starting point (~60k, 48 wide, 2 layers), character level. The paper starts GKD from a
supervised fine-tuned student; configs/arith.py distills one into the other.

    python -m gkd_jax.train --config=configs/arith_sft.py:role=teacher --workdir=/tmp/arith-teacher
    python -m gkd_jax.train --config=configs/arith_sft.py:role=student --workdir=/tmp/arith-student

The shipped `builtin:arith/teacher` and `builtin:arith/student_sft` were made by exactly these
commands, `builtin:arith/n2000/...` by the same with `,n=2000` (gkd_jax/assets/arith/README.md).

`:arg` (a comma list):
  role=teacher|student  which model (required)
  n=N|unlimited         the training set: the first N problems of training seed 0 (the paper's
                        regime); unlimited (default): data.train_examples drawn with the seed
  smoke                 a seconds-long CPU check
"""

from gkd_jax.config.arg import Option, choice, flag, parse_arg, positive_int_or_unlimited
from gkd_jax.config.defaults import (
    ARITH_STUDENT,
    ARITH_TEACHER,
    base_config,
    finite_training_set,
    model_config,
    shrink_for_smoke,
)

OPTIONS = {
    "role": choice("teacher", "student", required=True),
    "n": Option(positive_int_or_unlimited, None, values="N|unlimited"),
    "smoke": flag(),
}
# What differs between the two roles; both train 1,500 steps x 64 with weight decay 0.01.
ROLES = {
    "teacher": dict(shape=ARITH_TEACHER, learning_rate=2e-3, warmup_steps=100),
    "student": dict(shape=ARITH_STUDENT, learning_rate=3e-3, warmup_steps=50),
}


def get_config(arg: str = ""):
    opts = parse_arg(arg, OPTIONS, what="arith_sft config")
    role = ROLES[opts["role"]]
    c = base_config()
    finite_training_set(c, opts["n"])
    c.objective = "sft"
    c.model = model_config(**role["shape"])
    c.steps = 1500
    c.batch_size = 64
    c.log_every = 50
    c.optim.learning_rate = role["learning_rate"]
    c.optim.warmup_steps = role["warmup_steps"]
    c.optim.weight_decay = 0.01
    if opts["smoke"]:
        shrink_for_smoke(c)
    return c
