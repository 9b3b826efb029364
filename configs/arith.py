"""GKD on the embedded arith task in the paper's data regime: the default (2-core CPU, no download).

    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith

The teacher (~0.8M parameters) and the student's supervised starting point (~60k) were fine-tuned
on the first 2,000 training problems, and distillation reuses exactly them (300 steps x 64 = 9.6
epochs), as the paper distills GSM8K on the set its models were fine-tuned on. The run distills
on-policy (lmbda 1), then supervised KD (lmbda 0) from the same start for the same steps in
WORKDIR/compare_lmbda0, and prints both (~3-4 min on a 2-core CPU; --config.compare_lmbdas=
skips the comparison). The models ship in the package (`builtin:arith/n2000/...`, made by
configs/arith_sft.py:role=teacher,n=2000 and :role=student,n=2000); to make them in the workdir
first (~30 min more): --config.teacher.checkpoint= --config.init.checkpoint=

`:arg` (a comma list):
  n=N          the training set: the first N problems of training seed 0, on which the teacher
               and the SFT student were fine-tuned and which distillation reuses epoch after
               epoch (default 2000). Models: `builtin:arith/nN/...` where shipped, else trained
               in the workdir first by `arith_sft.py:role=teacher,n=N` / `:role=student,n=N`.
  n=unlimited  the models trained on 20,000 problems (`builtin:arith/{teacher,student_sft}`);
               distillation on 20,000 problems drawn with the run's seed, every target nearly
               new (docs/results/arith.md, "with unlimited data").
  smoke        a seconds-long CPU check (its models are trained in the workdir; no comparison).

Knobs as in the paper / TRL: --config.gkd.lmbda (student data fraction), --config.gkd.beta
(0 forward KL, 1 reverse KL), --config.gkd.seq_kd, --config.sampling.temperature,
--config.gkd.teacher_temperature.
"""

import os

from gkd_jax.config.arg import Option, flag, parse_arg, positive_int_or_unlimited
from gkd_jax.config.defaults import (
    ARITH_STUDENT,
    ARITH_TEACHER,
    base_config,
    finite_training_set,
    model_source,
    shrink_for_smoke,
)
from gkd_jax.data.resources import resolve_path

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_N = 2000  # docs/results/arith.md: the paper's data regime
OPTIONS = {
    "n": Option(positive_int_or_unlimited, DEFAULT_N, values="N|unlimited"),
    "smoke": flag(),
}


def shipped_or_recipe(name: str, n: int | None, role: str) -> tuple[str, str]:
    """(checkpoint, recipe) of one of the arith models for training set size n."""
    recipe = os.path.join(HERE, "arith_sft.py") + f":role={role}"
    recipe += f",n={n}" if n is not None else ""
    shipped = f"builtin:arith/{name}" if n is None else f"builtin:arith/n{n}/{name}"
    return (shipped if os.path.isdir(resolve_path(shipped)) else ""), recipe


def get_config(arg: str = ""):
    opts = parse_arg(arg, OPTIONS, what="arith config")
    n = opts["n"]
    c = base_config()
    c.objective = "gkd"
    c.model.update(ARITH_STUDENT)
    c.teacher = model_source(*shipped_or_recipe("teacher", n, "teacher"), **ARITH_TEACHER)
    c.init = model_source(*shipped_or_recipe("student_sft", n, "student"))
    finite_training_set(c, n)
    c.steps = 300
    c.batch_size = 64
    c.log_every = 25
    c.gkd.lmbda = 1.0
    c.gkd.beta = 0.5
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.compare_lmbdas = "0"  # supervised KD from the same start, printed beside on-policy GKD
    if opts["smoke"]:
        c.compare_lmbdas = ""
        c.teacher.checkpoint = c.init.checkpoint = ""  # made in the workdir by their recipes
        c.teacher.recipe += ",smoke"
        c.init.recipe += ",smoke"
        shrink_for_smoke(c)
    return c
