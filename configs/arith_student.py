"""Supervised starting point of the arith student (~60k parameters, 48 wide, 2 layers).

    python -m gkd_jax.train --config=configs/arith_student.py --workdir=/tmp/arith-student

The paper starts GKD from a supervised fine-tuned student; `builtin:arith/student_sft` was made by
exactly this command.
"""

from gkd_jax.config_defaults import base_config, model_config

STUDENT = dict(hidden_size=48, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)


def get_config(arg: str = ""):
    c = base_config()
    c.objective = "sft"
    c.model = model_config(**STUDENT)
    c.steps = 600
    c.batch_size = 64
    c.log_every = 50
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.01
    if arg == "smoke":
        c.steps, c.data.train_examples, c.eval.num_examples = 4, 256, 64
        c.batch_size, c.eval.batch_size, c.log_every = 16, 32, 2
    return c
