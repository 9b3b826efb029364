"""The GKD paper's grid and baselines on GSM8K (accuracy, 4-shot chain of
thought; FLAN-T5 students, FLAN-T5-XL teacher), via configs/gsm8k.py.

    python launch/sweep.py --sweep=gsm8k:stage=sft --root=/mnt/gkd/gsm8k  # SFT: 3 students, teacher
    python launch/sweep.py --sweep=gsm8k --root=/mnt/gkd/gsm8k  # GKD: 45 grid + 9 baselines
    launch/tpu_sweep.sh gsm8k /mnt/gkd/gsm8k vm-0 vm-1 vm-2 -- --only=_small_  # fanned out
    python launch/collect.py --root=/mnt/gkd/gsm8k --out=docs/figures --name=gsm8k

See launch/sweeps/paper.py for the sweep arg (stage, sizes, seeds; the rest goes to the config).
"""

from sweeps.paper import paper_runs
from sweeps.runs import Run


def get_runs(arg: str = "") -> list[Run]:
    return paper_runs("gsm8k", "configs/gsm8k.py", arg)
