"""The GKD paper's grid and baselines on XSum (ROUGE-2; T5 v1.1 LM-adapted
students, T5-XL teacher), via configs/xsum.py.

    python launch/sweep.py --sweep=xsum:stage=sft --root=/mnt/gkd/xsum  # SFT: 3 students, teacher
    python launch/sweep.py --sweep=xsum --root=/mnt/gkd/xsum  # GKD: 45 grid + 9 baselines
    launch/tpu_sweep.sh xsum /mnt/gkd/xsum vm-0 vm-1 vm-2 -- --only=_small_  # fanned out
    python launch/collect.py --root=/mnt/gkd/xsum --out=docs/figures --name=xsum

See launch/sweeps/paper.py for the sweep arg (stage, sizes, seeds; the rest goes to the config).
"""

from sweeps.paper import paper_runs
from sweeps.runs import Run


def get_runs(arg: str = "") -> list[Run]:
    return paper_runs("xsum", "configs/xsum.py", arg)
