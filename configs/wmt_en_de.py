"""GKD on WMT14 English->German translation (Agarwal et al., ICLR 2024, section 4 and appendix
A): T5 v1.1 LM-adapted students (google/t5-{small,base,large}-lm-adapt) distilled from a T5-XL
teacher (google/t5-xl-lm-adapt), each first fine-tuned on the task. BLEU (sacrebleu, corpus) on
the validation split, decoded by beam search (4 beams).

The recipe, three stages (W = one directory for all runs, as the sweep of launch/sweeps/paper.py
lays it out):

    W=/mnt/gkd/wmt_en_de
    # 1. SFT the teacher and the student on the task
    python -m gkd_jax.train --config=configs/wmt_en_de.py:stage=sft_teacher \
        --workdir=$W/wmt_en_de_sft_teacher_xl
    python -m gkd_jax.train --config=configs/wmt_en_de.py:stage=sft,student=small \
        --workdir=$W/wmt_en_de_sft_student_small
    # 2. GKD from the two
    python -m gkd_jax.train --config=configs/wmt_en_de.py:student=small,div=jsd0.1,lmbda=1,runs=$W \
        --workdir=$W/wmt_en_de_small_lmbda1_jsd0.1

The whole grid and the baselines: `python launch/sweep.py --sweep=wmt_en_de --root=$W` (see
configs/paper_common.py for every `:arg` part). Data: TFDS `wmt14_translate/de-en` by default
(--config.data.source=hf for wmt/wmt14:de-en, or `:data=DIR` for DIR/{train,eval}.jsonl with
{"en", "de"} records). Training reads the first 3.2M pairs (100K steps x 32: each is seen about
once) of the 4.5M.

Paper settings used here: Adafactor, 100K steps, batch 32, learning rate 3e-4, 5K linear warmup
and no cooldown (constant after it), dropout 0, 80 input / 80 output tokens, student samples at
temperature 1, teacher softmax temperature 1, sequence-level mean of the token divergence; eval
by beam search with 4 beams (length penalty 0.6, T5X's form).

Expected runtime, ESTIMATED from FLOPs at 40% MFU on one H100 (configs/paper_common.py
`estimate_hours`, not measured): SFT of T5-XL ~3.1 h; SFT of small / base / large ~0.1 / 0.3 /
0.8 h; GKD (lmbda=1) into small / base / large ~3.3 / 3.5 / 4.1 h (mostly the 80 sequential
decoding steps of each on-policy batch).

Compare with the paper's Figure 5 (WMT en->de, BLEU per student size, divergence and lmbda):
bar charts (no table of values), so read them off the figure. Qualitatively it
reports on-policy GKD ahead of supervised KD, SeqKD, ImitKD and f-distill for every student
size, with the best divergence differing from XSum's (it is task dependent).

CPU smoke run with tiny local models: `:smoke,models=DIR,data=DIR` (tests/test_paper_configs.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import T5_LM_ADAPT, Recipe, get_paper_config, parse_arg  # noqa: E402

RECIPE = Recipe(
    task="wmt_en_de",
    hub=T5_LM_ADAPT,
    steps=100_000,
    learning_rate=3e-4,
    warmup_steps=5_000,
    cooldown_steps=0,
    dropout_rate=0.0,
    max_input=80,
    max_output=80,
    train_examples=3_200_000,
    eval_examples=3_000,  # newstest2013, the whole validation split
)


def get_config(arg: str = ""):
    c = get_paper_config(RECIPE, arg)
    c.eval.decoding, c.eval.beam_size = "beam", 4
    if parse_arg(arg)["smoke"]:
        c.eval.beam_size = 2
    else:
        # T5 cuts inputs past 80 tokens at the end (the closing </s> kept last).
        c.data.prompt_overflow = "truncate_right"
    return c
