"""What configs/xsum.py, wmt_en_de.py and gsm8k.py share: the paper's recipe (Agarwal et al.,
ICLR 2024, appendix A), the model hub ids, and the `:arg` they all take.

`:arg` is a comma list of parts (any order):
  student=small|base|large   the student (default small); a bare `small` works too
  teacher=xl                 the teacher size (default xl, the paper's)
  div=fkl|rkl|tv|jsdB        the divergence, jsdB = generalized JSD(beta=B), e.g. jsd0.9
  lmbda=L                    the student data fraction (0 supervised KD, 1 on-policy)
  stage=gkd|sft_student|sft_teacher   gkd (default) distills; the sft stages fine-tune the student
                             (`sft` is the same) or the teacher on the task first (objective "sft")
  runs=DIR                   gkd starts from DIR/TASK_sft_student_SIZE/hf_model and the teacher
                             DIR/TASK_sft_teacher_xl/hf_model: the sft stages' --workdir's under
                             DIR (launch/sweeps/paper.py's layout). Without it: the hub models.
  models=DIR                 local Hugging Face dirs DIR/small, DIR/xl, ... instead of the hub ids
  data=DIR                   JSONL data DIR/train.jsonl + DIR/eval.jsonl (data.source "jsonl")
  smoke                      a CPU smoke run: a few steps, tiny lengths (use with models= and data=)
Everything else is a flag: --config.gkd.seq_kd=True (SeqKD), --config.gkd.lmbda_schedule=imitkd
with div=fkl (ImitKD), div=tv,lmbda=0.5 (f-distill), --config.seed=1.
"""

from __future__ import annotations

import dataclasses
import os

from gkd_jax.config import arg as config_arg
from gkd_jax.config.defaults import base_config

SIZES = ("small", "base", "large", "xl")
T5_LM_ADAPT = {s: f"google/t5-{s}-lm-adapt" for s in SIZES}  # T5 v1.1 LM-adapted (XSum, WMT)
FLAN_T5 = {s: f"google/flan-t5-{s}" for s in SIZES}  # GSM8K
# Parameter counts of T5 v1.1 / Flan-T5 (the two share shapes), for the runtime estimates.
PARAMS = {"small": 77e6, "base": 248e6, "large": 783e6, "xl": 2.85e9}
STAGES = ("gkd", "sft_student", "sft_teacher")
# The accelerator the docstrings' runtimes are estimated for: one H100 SXM, bf16 dense peak.
H100_FLOPS, H100_BYTES_PER_S, MFU = 989e12, 3.35e12, 0.4
DECODE_STEP_FLOOR_S = 1e-3  # assumed least time of one batched decoder step (launch latency)
OPTIONS = {  # the `:arg` above; a bare size is the student
    "student": config_arg.choice(*SIZES),  # None: small (the teacher's size for sft_teacher)
    "teacher": config_arg.choice(*SIZES, default="xl"),
    # checked by divergence(), kept as written (the name the sweeps and figures use)
    "div": config_arg.Option(lambda v: (divergence(v), v)[1], "jsd0.9", values="fkl|rkl|tv|jsdB"),
    "lmbda": config_arg.number(1.0),
    "stage": config_arg.choice(*STAGES, default="gkd", aliases={"sft": "sft_student"}),
    "runs": config_arg.directory(),
    "models": config_arg.directory(),
    "data": config_arg.directory(),
    "smoke": config_arg.flag(),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One task's row of the paper's appendix A table."""

    task: str
    hub: dict[str, str]
    steps: int
    learning_rate: float
    warmup_steps: int
    cooldown_steps: int  # linear to 0 over the last N steps; 0 = constant after warmup
    dropout_rate: float
    max_input: int
    max_output: int
    train_examples: int  # the train split's size, or what `steps` x 32 can see
    eval_examples: int  # the evaluation split's size
    teacher_temperature: float = 1.0
    batch_size: int = 32


def parse_arg(arg: str) -> dict:
    return config_arg.parse_arg(arg, OPTIONS, what="config", positional="student")


def divergence(name: str) -> tuple[str, float | None]:
    """'fkl' | 'rkl' | 'tv' | 'jsdB' -> (config.gkd.divergence, beta or None)."""
    if name in ("fkl", "rkl", "tv"):
        return name, None
    if name.startswith("jsd"):
        try:
            beta = float(name[3:])
        except ValueError:
            beta = -1.0
        if 0.0 < beta < 1.0:
            return "jsd", beta
    raise ValueError("use fkl, rkl, tv or jsdB with 0 < B < 1")


def model_dir(recipe: Recipe, opts: dict, size: str) -> str:
    return os.path.join(opts["models"], size) if opts["models"] else recipe.hub[size]


def get_paper_config(recipe: Recipe, arg: str):
    """The config of one stage of the paper's recipe for `recipe.task`, per `arg`."""
    opts = parse_arg(arg)
    stage = opts["stage"]
    default = opts["teacher"] if stage == "sft_teacher" else "small"
    size = opts["student"] or default
    c = base_config()
    c.task = recipe.task
    c.seed = 0
    c.dtype = "bfloat16"
    c.steps, c.batch_size = recipe.steps, recipe.batch_size
    c.log_every = 100
    c.checkpoint.every_steps = 1000
    c.max_new_tokens = recipe.max_output
    c.data.max_prompt_len = recipe.max_input
    c.data.train_examples = recipe.train_examples
    c.eval.num_examples = recipe.eval_examples
    c.eval.batch_size = 64
    c.dropout_rate = recipe.dropout_rate
    # Adafactor (T5X's settings, gkd_jax/training/optim.py), linear warmup then linear cooldown to
    # 0.
    o = c.optim
    o.name, o.schedule = "adafactor", "linear"
    o.learning_rate = recipe.learning_rate
    o.warmup_steps, o.cooldown_steps = recipe.warmup_steps, recipe.cooldown_steps
    o.grad_clip = 0.0  # T5X clips each Adafactor update by its RMS instead
    o.weight_decay = 0.0

    if stage == "gkd":
        c.objective = "gkd"
        name, beta = divergence(opts["div"])
        c.gkd.divergence = name
        if beta is not None:
            c.gkd.beta = beta
        c.gkd.lmbda = opts["lmbda"]
        c.gkd.reduction = "sequence"  # the paper's: per-sequence token mean, then batch mean
        c.gkd.teacher_temperature = recipe.teacher_temperature
        c.sampling.temperature = 1.0  # on-policy samples at temperature 1 (the paper's)
        if opts["runs"]:
            run = os.path.join(opts["runs"], f"{recipe.task}_sft_student_{size}", "hf_model")
            teacher = os.path.join(
                opts["runs"], f"{recipe.task}_sft_teacher_{opts['teacher']}", "hf_model"
            )
        else:
            run, teacher = model_dir(recipe, opts, size), model_dir(recipe, opts, opts["teacher"])
        c.init.checkpoint = c.tokenizer = run
        c.teacher.checkpoint = teacher
    else:
        c.objective = "sft"
        c.init.checkpoint = c.tokenizer = model_dir(recipe, opts, size)

    if opts["data"]:
        c.data.source = "jsonl"
        c.data.train_file = os.path.join(opts["data"], "train.jsonl")
        c.data.eval_file = os.path.join(opts["data"], "eval.jsonl")
    if opts["smoke"]:
        shrink(c)
    return c


def shrink(c) -> None:
    """`smoke`: seconds on a CPU with tiny local models; the recipe's shape, not its size."""
    c.dtype = "float32"
    c.steps, c.batch_size, c.log_every = 3, 8, 1
    c.optim.warmup_steps, c.optim.cooldown_steps = 1, 1
    c.checkpoint.every_steps = 0
    c.data.train_examples, c.eval.num_examples, c.eval.batch_size = 32, 8, 8
    c.data.max_prompt_len, c.max_new_tokens = 32, 8
    c.data.prompt_overflow = "truncate_left"  # the tiny prompt budget keeps prompts' ends


def estimate_hours(recipe: Recipe, student: str, teacher: str = "xl") -> dict[str, float]:
    """Estimated hours on one H100 for the recipe's steps: the SFT of the student, of the
    teacher, and GKD with lmbda = 1 (an ESTIMATE from FLOPs at 40% MFU, not a measurement).

    Per example, an encoder-decoder's forward is ~2 x (N / 2) x tokens for each stack, i.e.
    ~N x (input + output) FLOPs at the padded lengths; training is 3x a forward. GKD adds the
    teacher's forward and the student's sampling, memory bound: each of `max_output` decoder
    steps reads the student's bf16 weights once, and takes at least DECODE_STEP_FLOOR_S."""
    tokens = recipe.max_input + recipe.max_output
    rate, b = H100_FLOPS * MFU, recipe.batch_size

    def train(n):
        return 3 * n * tokens * b / rate

    read = (PARAMS[student] / 2) * 2 / H100_BYTES_PER_S  # the decoder's bf16 weights
    sample = recipe.max_output * max(read, DECODE_STEP_FLOOR_S)
    gkd = train(PARAMS[student]) + PARAMS[teacher] * tokens * b / rate + sample
    return {
        "sft_student": recipe.steps * train(PARAMS[student]) / 3600,
        "sft_teacher": recipe.steps * train(PARAMS[teacher]) / 3600,
        "gkd": recipe.steps * gkd / 3600,
    }
