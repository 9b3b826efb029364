"""Every sweep by the name `--sweep=NAME[:arg]` takes: NAME -> get_runs(arg) -> list[Run].

    arith          arith.py: the lmbda x divergence grid on arith with unlimited data
    arith_finite   arith_finite.py: the paper's data regime on arith (docs/results/arith.md's
    protocol)
    arith_rl       arith_rl.py: RL + GKD on arith, reward vs divergence to the teacher
    xsum, wmt_en_de, gsm8k   paper.py: the paper's grid on that task (configs/TASK.py)
    real_heal      real_heal.py: healing a layer-pruned SmolLM2 (SeqKD vs GKD vs mixed)

A new sweep is a function from its `:arg` to its runs (launch/sweeps/runs.py), added here.
"""

import functools
from collections.abc import Callable

from sweeps import arith, arith_finite, arith_rl, paper, real_heal
from sweeps.runs import Run

SWEEPS: dict[str, Callable[[str], list[Run]]] = {
    "arith": arith.get_runs,
    "arith_finite": arith_finite.get_runs,
    "arith_rl": arith_rl.get_runs,
    "real_heal": real_heal.get_runs,
    **{task: functools.partial(paper.paper_runs, task, cfg) for task, cfg in paper.TASKS.items()},
}
