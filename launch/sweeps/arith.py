"""The paper's lmbda x divergence grid on the embedded arith task with unlimited data (the models
trained on 20,000 problems, distillation on problems nearly all new; one student size, ~60k
parameters, one teacher, ~0.8M). For the paper's finite-data regime see arith_finite.py.

    python launch/sweep.py --sweep=arith --root=/tmp/arith-sweep --config.steps=150
    python launch/collect.py --root=/tmp/arith-sweep --out=docs/figures --name=arith_sweep

15 runs (lmbda {0, 0.5, 1} x {fkl, jsd0.1, jsd0.5, jsd0.9, rkl}) x seeds. `:arg` is a comma list:
`seeds=0+1+2` (default 0), `baselines` (adds SeqKD, ImitKD and f-distill), `smoke` (the
seconds-long CPU config, for tests).
"""

from sweeps.runs import DIVERGENCES, PAPER_LMBDAS, Run, divergence_run, grid

from gkd_jax.config.arg import flag, parse_arg, plus_list

CONFIG = "configs/arith.py:n=unlimited"  # the shipped models trained on 20,000 problems
STUDENT = "60k"  # the one shipped SFT student
NO_COMPARISON = "--config.compare_lmbdas="  # one run per workdir (configs/arith.py compares)
OPTIONS = {"seeds": plus_list(int, default=(0,)), "baselines": flag(), "smoke": flag()}


def get_runs(arg: str = "") -> list[Run]:
    opts = parse_arg(arg, OPTIONS, what="arith sweep")
    config = CONFIG + (",smoke" if opts["smoke"] else "")
    runs = []
    for point in grid(lmbda=PAPER_LMBDAS, divergence=list(DIVERGENCES), seed=opts["seeds"]):
        runs.append(
            divergence_run(
                "arith",
                config,
                point["lmbda"],
                point["divergence"],
                extra=(NO_COMPARISON, f"--config.seed={point['seed']}"),
                student=STUDENT,
                seed=point["seed"],
            )  # fmt: skip
        )
    if opts["baselines"]:
        for seed in opts["seeds"]:
            runs += baseline_runs(config, seed)
    return runs


def baseline_runs(config: str, seed: int) -> list[Run]:
    """The paper's baselines, each by the trainer flags that make it (supervised KD is lmbda=0
    of the grid)."""
    flags = {
        "seqkd": (
            "--config.gkd.lmbda=0",
            "--config.gkd.seq_kd=True",
            "--config.gkd.divergence=fkl",
        ),
        "imitkd": ("--config.gkd.lmbda_schedule=imitkd", "--config.gkd.divergence=fkl"),
        "fdistill": ("--config.gkd.lmbda=0.5", "--config.gkd.divergence=tv"),
    }
    return [
        Run(
            name=f"arith_{method}_student{STUDENT}_seed{seed}",
            config=config,
            flags=(*f, NO_COMPARISON, f"--config.seed={seed}"),
            axes={"method": method, "student": STUDENT, "seed": seed},
        )
        for method, f in flags.items()
    ]
