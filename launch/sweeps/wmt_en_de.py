"""The GKD paper's grid and baselines on WMT14 en->de (BLEU, beam
search; T5 v1.1 LM-adapted students, T5-XL teacher), via configs/wmt_en_de.py.

    python launch/sweep.py --sweep=wmt_en_de:stage=sft --root=/mnt/gkd/wmt_en_de  # SFT stage
    python launch/sweep.py --sweep=wmt_en_de --root=/mnt/gkd/wmt_en_de  # GKD: 45 grid + 9 baselines
    launch/tpu_sweep.sh wmt_en_de /mnt/gkd/wmt_en_de vm-0 vm-1 vm-2 -- --only=_small_  # fanned out
    python launch/collect.py --root=/mnt/gkd/wmt_en_de --out=docs/figures --name=wmt_en_de

See launch/sweeps/paper.py for the sweep arg (stage, sizes, seeds; the rest goes to the config).
"""

from sweeps.paper import paper_runs
from sweeps.runs import Run


def get_runs(arg: str = "") -> list[Run]:
    return paper_runs("wmt_en_de", "configs/wmt_en_de.py", arg)
