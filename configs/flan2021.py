"""GKD for task-agnostic instruction tuning (Agarwal et al., ICLR 2024, the paper's fourth
experiment): a FLAN-T5 student (google/flan-t5-{small,base,large}; the paper's is large) distilled
from FLAN-T5-XL (google/flan-t5-xl) on the FLAN 2021 instruction mixture, then scored on held-out
benchmarks: MMLU and BIG-Bench Hard.

    W=/mnt/gkd/flan2021
    # GKD from the instruction-tuned hub models: on-policy (lmbda=1) reverse KL
    python -m gkd_jax.train --config=configs/flan2021.py:student=large,div=rkl,lmbda=1 \
        --workdir=$W/flan2021_large_lmbda1_rkl
    # the paper's benchmarks, on the run (or on any checkpoint: the teacher, the start)
    python -m gkd_jax.evaluate --benchmark=mmlu --checkpoint=$W/flan2021_large_lmbda1_rkl \
        --data_dir=DATA/mmlu --shots=5 --dtype=bfloat16 --batch_size=32
    python -m gkd_jax.evaluate --benchmark=bbh --checkpoint=$W/flan2021_large_lmbda1_rkl \
        --data_dir=DATA/BIG-Bench-Hard --shots=3 --dtype=bfloat16 --batch_size=32
    python -m gkd_jax.evaluate --benchmark=mmlu --checkpoint=google/flan-t5-large \
        --data_dir=DATA/mmlu   # the student before distillation

The baselines are the other configs' flags: supervised KD `lmbda=0`, SeqKD
--config.gkd.seq_kd=True, ImitKD --config.gkd.lmbda_schedule=imitkd with div=fkl (see
configs/paper_common.py for every `:arg` part). The FLAN-T5 students are instruction-tuned
already, so there is no SFT stage; to start from a plain T5 instead, pass
--config.init.checkpoint=google/t5-large-lm-adapt --config.tokenizer=google/t5-large-lm-adapt.

Data: FLAN 2021 as the Flan Collection released it, the Hugging Face dataset
`DataProvenanceInitiative/flan2021_submix_original` (fields "inputs" / "targets", the FLAN
2021 tasks under their zero- and few-shot templates, the submix FLAN-T5 itself was trained
on), read with `datasets` (config.data.source="hf"; downloaded by `datasets` on first use, as
any hub dataset, so only where the user has or can fetch it). It has one split: the last 2,000
rows are held out for the in-training score (exact match of the normalized target, a monitor;
the paper's metrics are MMLU and BBH above). Any dataset with "inputs" / "targets" fields
works: --config.data.dataset=NAME (or a save_to_disk directory with train/validation splits
and --config.data.train_split=train --config.data.eval_split=validation), or `:data=DIR` for
DIR/{train,eval}.jsonl. Benchmark data are local copies in their own formats (MMLU's CSV
release or cais/mmlu; BIG-Bench-Hard's bbh/ + cot-prompts/): gkd_jax/evaluation/benchmarks/.

From the paper (its abstract and our reading of its instruction-tuning section; the full text
could not be consulted offline, so check): the FLAN-T5-XL teacher and FLAN-T5 students, the FLAN
2021 mixture, MMLU and BBH as the held-out evaluation, and on-policy data with reverse KL as its
best instruction-tuning setting (this config's `:arg` defaults are div=rkl, lmbda=1). ASSUMED
(not checked against the paper's appendix; verify before quoting numbers): 50K steps,
batch 128, Adafactor at 3e-4 (the paper's rate for its other T5 runs) with 2K linear warmup and
no cooldown (T5X's constant rate for FLAN fine-tuning), dropout 0, 2048 input / 256 output
tokens (FLAN-T5's input length; long few-shot inputs keep their end), student samples at
temperature 1, teacher softmax temperature 1, sequence-level mean of the token divergence.

Expected runtime, ESTIMATED from FLOPs at 40% MFU on one H100 (configs/paper_common.py
`estimate_hours`, padded lengths, not measured): GKD (lmbda=1) into small / base / large ~36 /
41 / 57 h. The XL teacher and a batch of 128 x 2048 tokens need --config.grad_accum=4+ (or more
devices: --config.mesh.*) to fit 80 GB.

CPU smoke run with tiny local models and data: `:smoke,models=DIR,data=DIR` (DIR/small, DIR/xl:
Hugging Face T5 dirs with a tokenizer; DIR/{train,eval}.jsonl with {"inputs", "targets"}),
as tests/test_paper_configs.py runs it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import FLAN_T5, Recipe, get_paper_config, parse_arg  # noqa: E402

from gkd_jax.data.paper_tasks import FLAN2021_EVAL_ROWS  # noqa: E402

RECIPE = Recipe(
    task="flan2021",
    hub=FLAN_T5,
    steps=50_000,
    learning_rate=3e-4,
    warmup_steps=2_000,
    cooldown_steps=0,
    dropout_rate=0.0,
    max_input=2048,
    max_output=256,
    train_examples=50_000 * 128,  # what 50K steps of 128 can see (more than the split holds)
    eval_examples=FLAN2021_EVAL_ROWS,
    batch_size=128,
)


def get_config(arg: str = ""):
    opts = parse_arg(arg)
    if not any(part.split("=")[0].strip() == "div" for part in arg.split(",")):
        arg = ",".join(p for p in (arg, "div=rkl") if p)  # the paper's best here, not jsd0.9
    c = get_paper_config(RECIPE, arg)
    if not opts["data"]:
        c.data.source = "hf"  # no TFDS copy of FLAN 2021
        c.data.train_split = f"train[:-{FLAN2021_EVAL_ROWS}]"  # the eval rows held out
    # FLAN's few-shot templates can run past 2048 tokens: keep the end (the question asked).
    c.data.prompt_overflow = "truncate_left"
    # A handful of odd rows among millions is no reason to stop: skip them, and report them.
    c.data.strict = False
    return c
