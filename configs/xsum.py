"""GKD on XSum summarization (Agarwal et al., ICLR 2024, section 4 and appendix A): T5 v1.1
LM-adapted students (google/t5-{small,base,large}-lm-adapt) distilled from a T5-XL teacher
(google/t5-xl-lm-adapt), each first fine-tuned on XSum. ROUGE-2 on the validation split.

The recipe, three stages (W = one directory for all runs, as the sweep of launch/sweeps/paper.py
lays it out):

    W=/mnt/gkd/xsum
    # 1. SFT the teacher and the student on the task
    python -m gkd_jax.train --config=configs/xsum.py:stage=sft_teacher \
        --workdir=$W/xsum_sft_teacher_xl
    python -m gkd_jax.train --config=configs/xsum.py:stage=sft,student=small \
        --workdir=$W/xsum_sft_student_small
    # 2. GKD from the two: on-policy (lmbda=1) JSD(0.9), the `:arg` defaults
    python -m gkd_jax.train --config=configs/xsum.py:student=small,div=jsd0.9,lmbda=1,runs=$W \
        --workdir=$W/xsum_small_lmbda1_jsd0.9

The whole grid and the baselines: `python launch/sweep.py --sweep=xsum --root=$W` (see
configs/paper_common.py for every `:arg` part). Data: TFDS `xsum` by default
(--config.data.source=hf for EdinburghNLP/xsum, or `:data=DIR` for DIR/{train,eval}.jsonl with
{"document", "summary"} records).

Paper settings used here: Adafactor, 40K steps, batch 32, learning rate 3e-4 (1e-3 for a T5-small
student with any divergence but reverse KL, the paper's best), 2K linear warmup, linear to 0 over
the last 10K steps, dropout 0, 1024 input / 64 output tokens, student samples at temperature 1,
teacher softmax temperature 1 (the paper's temperature-sampling runs use 0.1:
--config.gkd.teacher_temperature=0.1), sequence-level mean of the token divergence.

Expected runtime, ESTIMATED from FLOPs at 40% MFU on one H100 (configs/paper_common.py
`estimate_hours`, not measured): SFT of T5-XL ~8.4 h; SFT of small / base / large ~0.2 / 0.7 /
2.3 h; GKD (lmbda=1) into small / base / large ~3.7 / 4.2 / 5.8 h. The teacher SFT may need
--config.grad_accum=2+ to fit one 80 GB device.

Compare with the paper's Figure 4 (XSum, ROUGE-2 per student size, divergence and lmbda): its
numbers are bar charts, not tables, so read their values off
the figure. What it reports qualitatively: on-policy GKD (lmbda=1) beats supervised KD
(lmbda=0), SeqKD, ImitKD and f-distill for every student size, with mode-seeking divergences
(reverse KL, JSD(0.9)) doing best with on-policy data.

CPU smoke run of the three stages with tiny local models (tests/test_paper_configs.py makes them):
`:smoke,models=DIR,data=DIR` (DIR/small, DIR/xl: Hugging Face T5 dirs with a tokenizer).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import T5_LM_ADAPT, Recipe, get_paper_config, parse_arg  # noqa: E402

RECIPE = Recipe(
    task="xsum",
    hub=T5_LM_ADAPT,
    steps=40_000,
    learning_rate=3e-4,
    warmup_steps=2_000,
    cooldown_steps=10_000,
    dropout_rate=0.0,
    max_input=1024,
    max_output=64,
    train_examples=204_045,  # the whole train split
    eval_examples=11_332,  # the whole validation split
)


def get_config(arg: str = ""):
    c = get_paper_config(RECIPE, arg)
    opts = parse_arg(arg)
    if opts["stage"] == "gkd" and (opts["student"] or "small") == "small" and opts["div"] != "rkl":
        c.optim.learning_rate = 1e-3
    # T5 cuts inputs past 1024 tokens at the end (the closing </s> kept last).
    if not opts["smoke"]:
        c.data.prompt_overflow = "truncate_right"
    return c
