"""On-policy distillation of a Hugging Face chat model: TRL's GKD quick start as a config.

TRL's example distills Qwen2-1.5B-Instruct into Qwen2-0.5B-Instruct on chat data; with a network
(or a warm hub cache) the same here is

    python -m gkd_jax.train --config=configs/chat.py --workdir=/tmp/gkd-chat \
        --config.data.train_file=hf:trl-lib/chatbot_arena_completions

Offline, on local directories (the pair made by ../shared/bench/make_tiny_hf_models.py: a Qwen2
teacher 50.5M and student 19.7M with random weights, 256 `messages` records; ~1 min on a 2-core
CPU with `,smoke`):

    python make_tiny_hf_models.py --out /tmp/bench-models
    python -m gkd_jax.train --config=configs/chat.py:/tmp/bench-models,smoke --workdir=/tmp/chat

`:DIR` (or `:models=DIR`) reads DIR/student, DIR/teacher and DIR/prompts.jsonl; any field can be
set by flag too: --config.init.checkpoint (the student), --config.teacher.checkpoint,
--config.tokenizer, --config.data.train_file (JSONL, a `datasets.save_to_disk` dir, or hf:NAME).
Data are TRL's formats: {"messages": [...]} rendered with the tokenizer's chat template (the prompt
is every turn before the last assistant turn), or {"prompt", "completion"}. The distilled student
is written to WORKDIR/hf_model in Hugging Face format. Evaluation reports the student's JSD(beta)
from the teacher on its own greedy replies to held-out prompts (lower is better), and, since
degenerate replies can game that, the same JSD and the student's NLL on the data's reference
replies (eval.teacher_forced "auto"), the replies' length, stop rate and distinct-n, three sample
replies, and a warning when the replies collapse (docs/guides/evaluation.md).

Knobs default to TRL's GKDConfig: lmbda 0.5, beta 0.5, sampling temperature 0.9, 128 new tokens.
"""

import os

from gkd_jax.config.arg import directory, flag, parse_arg
from gkd_jax.config.defaults import base_config, model_source, shrink_for_smoke

OPTIONS = {"models": directory(), "smoke": flag()}  # a bare DIR is models=DIR


def get_config(arg: str = ""):
    c = base_config()
    c.task = "chat"
    c.objective = "gkd"
    c.init = model_source("Qwen/Qwen2-0.5B-Instruct")
    c.teacher = model_source("Qwen/Qwen2-1.5B-Instruct")
    c.tokenizer = "Qwen/Qwen2-0.5B-Instruct"
    c.data.train_file = ""
    c.data.max_prompt_len = 512
    c.max_new_tokens = 128
    c.steps = 1000
    c.batch_size = 8
    c.log_every = 10
    c.eval.num_examples = 64
    c.eval.batch_size = 16
    c.gkd.lmbda = 0.5
    c.gkd.beta = 0.5
    c.gkd.reduction = "token"  # TRL's batchmean over completion tokens
    c.sampling.temperature = 0.9
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.dtype = "bfloat16"

    opts = parse_arg(arg, OPTIONS, what="chat config", positional="models")
    if opts["models"]:
        c.init.checkpoint = c.tokenizer = os.path.join(opts["models"], "student")
        c.teacher.checkpoint = os.path.join(opts["models"], "teacher")
        c.data.train_file = os.path.join(opts["models"], "prompts.jsonl")
    if opts["smoke"]:
        shrink_for_smoke(c)
        c.batch_size, c.eval.num_examples, c.eval.batch_size = 8, 16, 16
        c.max_new_tokens, c.data.max_prompt_len = 48, 48
        c.dtype = "float32"
    return c
