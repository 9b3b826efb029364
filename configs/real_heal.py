"""Healing a layer-pruned SmolLM2-135M-Instruct from the full model: the real-model study
(docs/results/real_heal_protocol.md holds its protocol; launch/sweeps/real_heal.py runs its
9 cells).

The teacher is SmolLM2-135M-Instruct (30 layers); the student is its own copy without layers
20-25 (`init.layers` "0-19,26-29", 24 layers), healed by GKD on the prompts of
gkd_jax/data/real_prompts.py, whose completions are the teacher's greedy replies:

    python -m gkd_jax.teacher_replies --teacher ~/.cache/real-models/smollm2-135m-instruct \
        --out ~/real_heal_data                                    # ~2 min on a 2-core CPU
    python -m gkd_jax.train --config=configs/real_heal.py:lmbda=1,seed=0 --workdir=/tmp/heal

`:arg` (a comma list):
  lmbda=L      the student data fraction: 0 = supervised KD on the teacher's greedy replies
               (sequence-level KD, as the data are those replies), 1 = on-policy GKD, 0.5 mixed
               (default 1)
  seed=N       the run's seed: on-policy samples, batch order (default 0)
  models=DIR   the teacher's Hugging Face directory is DIR/smollm2-135m-instruct (default
               $GKD_REAL_MODELS, else ~/.cache/real-models: tests/real_models.py's place)
  data=DIR     DIR/train.jsonl and DIR/heldout.jsonl (default $GKD_REAL_HEAL_DATA, else
               ~/real_heal_data)
  smoke        2 steps, 16 held-out prompts: an end-to-end check

Every cell: 60 steps x 8 sequences (480, ~1.07 epochs of the 448 training prompts), AdamW at
5e-5 (5 warmup steps, cosine to 10%), JSD(0.5) per token, mean per sequence (the paper's
reduction; evaluation averages the same way), on-policy samples at temperature 1, float32.
Evaluation, at the start and the end, greedy on the 112 held-out prompts: on_policy_jsd and
rkl_to_teacher (exact, per token, on the student's own greedy replies), the teacher-forced
divergences and reference_nll on the teacher's greedy replies, answer_accuracy on the checkable
families, the replies' statistics. Time: see docs/results/real_heal_protocol.md (measured,
2-core CPU).
"""

import os

from gkd_jax.config.arg import Option, directory, flag, number, parse_arg
from gkd_jax.config.defaults import base_config, model_source

LAYERS = "0-19,26-29"  # six contiguous layers out (20-25): healed in issue 24's try
STEPS, BATCH = 60, 8  # the same for every cell: same steps x batch
TEACHER = "smollm2-135m-instruct"
OPTIONS = {
    "lmbda": number(1.0),
    "seed": Option(int, 0, values="N"),
    "models": directory(),
    "data": directory(),
    "smoke": flag(),
}


def default_dirs() -> tuple[str, str]:
    """(models dir, data dir) when the `:arg` names none: the environment, else the defaults."""
    models = os.environ.get("GKD_REAL_MODELS") or "~/.cache/real-models"
    data = os.environ.get("GKD_REAL_HEAL_DATA") or "~/real_heal_data"
    return os.path.expanduser(models), os.path.expanduser(data)


def get_config(arg: str = ""):
    opts = parse_arg(arg, OPTIONS, what="real_heal config")
    if not 0.0 <= opts["lmbda"] <= 1.0:
        raise ValueError(f"real_heal config arg lmbda={opts['lmbda']}: must be in [0, 1]")
    models, data = default_dirs()
    teacher = os.path.join(opts["models"] or models, TEACHER)
    data = opts["data"] or data

    c = base_config()
    c.task, c.objective, c.seed = "chat", "gkd", opts["seed"]
    c.teacher = model_source(teacher)
    c.init = model_source(teacher, layers=LAYERS)
    c.tokenizer = teacher
    c.data.train_file = os.path.join(data, "train.jsonl")
    c.data.eval_file = os.path.join(data, "heldout.jsonl")
    c.data.max_prompt_len = 64  # the longest prompt with SmolLM2's system turn is ~50 tokens
    c.max_new_tokens = 48  # the teacher's replies were made with this budget too
    c.steps, c.batch_size, c.log_every = STEPS, BATCH, 5
    c.eval.num_examples, c.eval.batch_size = 112, 56
    c.eval.teacher_forced = "on"  # the references are the teacher's greedy replies
    c.eval.divergence_to_teacher = "rkl"  # exact per-token KL(p_S || p_T) on own replies
    c.gkd.lmbda, c.gkd.divergence, c.gkd.beta = opts["lmbda"], "jsd", 0.5
    c.gkd.reduction = "sequence"
    c.sampling.temperature = 1.0  # the paper samples the student at 1
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.weight_decay = 5e-5, 5, 0.0
    c.dtype = "float32"  # bfloat16 is slower than float32 on CPU
    c.checkpoint.every_steps, c.checkpoint.keep = 20, 1  # an interrupted cell resumes
    c.export.hf = False  # WORKDIR/model holds the student; 9 HF copies would be 4 GB
    if opts["smoke"]:
        c.steps, c.log_every, c.eval.num_examples, c.eval.batch_size = 2, 1, 16, 16
        c.checkpoint.every_steps = 0
    return c
