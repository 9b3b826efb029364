"""GKD on GSM8K arithmetic reasoning (Agarwal et al., ICLR 2024, section 4 and appendix A):
FLAN-T5 students (google/flan-t5-{small,base,large}) distilled from a FLAN-T5-XL teacher
(google/flan-t5-xl), each first fine-tuned on GSM8K's training solutions. Accuracy of the final
answer on the test split (GSM8K has no validation split), 4-shot chain-of-thought prompt
(gkd_jax/data/gsm8k_prompt.py), greedy decoding.

The recipe, three stages (W = one directory for all runs, as the sweep of launch/sweeps/paper.py
lays it out):

    W=/mnt/gkd/gsm8k
    # 1. SFT the teacher and the student on the task
    python -m gkd_jax.train --config=configs/gsm8k.py:stage=sft_teacher \
        --workdir=$W/gsm8k_sft_teacher_xl
    python -m gkd_jax.train --config=configs/gsm8k.py:stage=sft,student=small \
        --workdir=$W/gsm8k_sft_student_small
    # 2. GKD from the two
    python -m gkd_jax.train --config=configs/gsm8k.py:student=small,div=fkl,lmbda=1,runs=$W \
        --workdir=$W/gsm8k_small_lmbda1_fkl

The whole grid and the baselines: `python launch/sweep.py --sweep=gsm8k --root=$W` (see
configs/paper_common.py for every `:arg` part). Data: TFDS `gsm8k` by default
(--config.data.source=hf for openai/gsm8k:main, or `:data=DIR` for DIR/{train,eval}.jsonl with
{"question", "answer"} records). Targets are the dataset's solutions without the calculator
annotations, ending "The answer is N." (gkd_jax/data/paper_tasks.py).

Paper settings used here: Adafactor, 40K steps, batch 32, learning rate 3e-4, 2K linear warmup,
linear to 0 over the last 10K steps, dropout 0.05 (the student, in training only), 512 input /
320 output tokens, student samples at temperature 1, teacher softmax temperature 0.1 inside the
loss, sequence-level mean of the token divergence. A 4-shot prompt past 512 tokens keeps its end
(data.prompt_overflow="truncate_left": the question survives, the first exemplar's start goes).

Expected runtime, ESTIMATED from FLOPs at 40% MFU on one H100 (configs/paper_common.py
`estimate_hours`, not measured): SFT of FLAN-T5-XL ~6.4 h; SFT of small / base / large ~0.2 /
0.6 / 1.8 h; GKD (lmbda=1) into small / base / large ~5.9 / 6.2 / 7.4 h (the 320 sequential
decoding steps of each on-policy batch dominate).

Compare with the paper's Figure 6 (GSM8K accuracy per student size, divergence and lmbda): bar
charts (no table of values), so read them off the figure. Qualitatively it
reports on-policy GKD ahead of supervised KD, SeqKD, ImitKD and f-distill for every student
size.

CPU smoke run with tiny local models: `:smoke,models=DIR,data=DIR` (tests/test_paper_configs.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import FLAN_T5, Recipe, get_paper_config  # noqa: E402

RECIPE = Recipe(
    task="gsm8k",
    hub=FLAN_T5,
    steps=40_000,
    learning_rate=3e-4,
    warmup_steps=2_000,
    cooldown_steps=10_000,
    dropout_rate=0.05,
    max_input=512,
    max_output=320,
    train_examples=7_473,  # the whole train split
    eval_examples=1_319,  # the whole test split
    teacher_temperature=0.1,
)


def get_config(arg: str = ""):
    c = get_paper_config(RECIPE, arg)
    c.data.prompt_overflow = "truncate_left"
    return c
