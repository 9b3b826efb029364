"""On-policy GKD on the embedded arith task: the default, runs on a 2-core CPU, no download.

    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith

Expected: ~10 min on a 2-core CPU. The teacher (~0.8M parameters) and the student's supervised
starting point (~60k) ship in the package (`builtin:arith/...`, made by configs/arith_teacher.py
and configs/arith_student.py). To make them from scratch in the workdir first (~30 min more):

    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith \
        --config.teacher.checkpoint= --config.init.checkpoint=

Knobs as in the paper / TRL: --config.gkd.lmbda (student data fraction), --config.gkd.beta
(0 forward KL, 1 reverse KL), --config.gkd.seq_kd, --config.sampling.temperature,
--config.gkd.teacher_temperature. `:smoke` shrinks everything for a seconds-long CPU check.
"""

import os

from gkd_jax.config_defaults import (
    ARITH_STUDENT,
    ARITH_TEACHER,
    base_config,
    model_source,
    shrink_for_smoke,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = ""):
    c = base_config()
    c.objective = "gkd"
    c.model.update(ARITH_STUDENT)
    c.teacher = model_source(
        "builtin:arith/teacher", os.path.join(HERE, "arith_teacher.py"), **ARITH_TEACHER
    )
    c.init = model_source("builtin:arith/student_sft", os.path.join(HERE, "arith_student.py"))
    c.steps = 300
    c.batch_size = 64
    c.log_every = 25
    c.gkd.lmbda = 1.0
    c.gkd.beta = 0.5
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    if arg == "smoke":
        c.teacher.checkpoint = c.init.checkpoint = ""  # made in the workdir by their recipes
        c.teacher.recipe += ":smoke"
        c.init.recipe += ":smoke"
        shrink_for_smoke(c)
    return c
