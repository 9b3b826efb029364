"""On-policy GKD on the embedded arith task: the default, runs on a 2-core CPU, no download.

    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith

Expected: ~10 min on a 2-core CPU. The teacher (~0.8M parameters) and the student's supervised
starting point (~60k) ship in the package (`builtin:arith/...`, made by configs/arith_teacher.py
and configs/arith_student.py). To make them from scratch in the workdir first (~30 min more):

    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith \
        --config.teacher.checkpoint= --config.init.checkpoint=

`:arg` (a comma list):
  n=N          the paper's data regime: the teacher and the SFT student were fine-tuned on the
               first N training problems (training seed 0) and distillation reuses exactly them,
               epoch after epoch. Models: `builtin:arith/nN/...` where shipped, else trained in
               the workdir first by `arith_teacher.py:n=N` / `arith_student.py:n=N`.
  n=unlimited  the models trained on 20,000 problems; distillation on 20,000 problems drawn
               with the run's seed (README "Results on arith": every target nearly new).
  smoke        a seconds-long CPU check (its models are trained in the workdir).

Knobs as in the paper / TRL: --config.gkd.lmbda (student data fraction), --config.gkd.beta
(0 forward KL, 1 reverse KL), --config.gkd.seq_kd, --config.sampling.temperature,
--config.gkd.teacher_temperature.
"""

import os

from gkd_jax.config_defaults import (
    ARITH_STUDENT,
    ARITH_TEACHER,
    arith_options,
    base_config,
    finite_training_set,
    model_source,
    shrink_for_smoke,
)
from gkd_jax.resources import resolve_path

HERE = os.path.dirname(os.path.abspath(__file__))


def shipped_or_recipe(name: str, n: int | None, recipe: str) -> tuple[str, str]:
    """(checkpoint, recipe) of one of the arith models for training set size n."""
    recipe = os.path.join(HERE, recipe) + (f":n={n}" if n is not None else "")
    shipped = f"builtin:arith/{name}" if n is None else f"builtin:arith/n{n}/{name}"
    return (shipped if os.path.isdir(resolve_path(shipped)) else ""), recipe


def get_config(arg: str = ""):
    opts = arith_options(arg)
    n = opts["n"]
    c = base_config()
    c.objective = "gkd"
    c.model.update(ARITH_STUDENT)
    c.teacher = model_source(*shipped_or_recipe("teacher", n, "arith_teacher.py"), **ARITH_TEACHER)
    c.init = model_source(*shipped_or_recipe("student_sft", n, "arith_student.py"))
    finite_training_set(c, n)
    c.steps = 300
    c.batch_size = 64
    c.log_every = 25
    c.gkd.lmbda = 1.0
    c.gkd.beta = 0.5
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    if opts["smoke"]:
        c.teacher.checkpoint = c.init.checkpoint = ""  # made in the workdir by their recipes
        c.teacher.recipe += ":smoke" if n is None else ",smoke"
        c.init.recipe += ":smoke" if n is None else ",smoke"
        shrink_for_smoke(c)
    return c
