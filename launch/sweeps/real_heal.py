"""The real-model healing study (docs/results/real_heal_protocol.md, protocol fixed before
any run): a layer-pruned SmolLM2-135M-Instruct student (layers 20-25 out) healed from the full
model by supervised KD on the teacher's greedy replies (SeqKD, lmbda 0), on-policy GKD (lmbda 1)
and mixed (0.5), three seeds each, same steps x batch (configs/real_heal.py).

    python -m gkd_jax.teacher_replies --teacher ~/.cache/real-models/smollm2-135m-instruct \
        --out ~/real_heal_data
    nohup python launch/sweep.py --sweep=real_heal --root=$HOME/real_heal_sweep --parallel=1 \
        > $HOME/real_heal_sweep.log 2>&1 &
    python launch/real_heal_table.py --root=$HOME/real_heal_sweep

`:arg` (a comma list): `seeds=0+1+2` (default), `smoke` (2 steps per cell), and the config's
`models=DIR`, `data=DIR` (passed on). Run order: seed by seed, so every finished seed is a
complete A/B/C comparison.
"""

from sweeps.runs import Run, fmt_lmbda

from gkd_jax.config.arg import directory, flag, parse_arg, plus_list

CONFIG = "configs/real_heal.py"
# The cells: name -> lmbda (the student data fraction); every other setting is the config's.
CELLS = {"seqkd": 0.0, "gkd": 1.0, "mixed": 0.5}
OPTIONS = {
    "seeds": plus_list(int, default=(0, 1, 2)),
    "smoke": flag(),
    "models": directory(),
    "data": directory(),
}


def get_runs(arg: str = "") -> list[Run]:
    opts = parse_arg(arg, OPTIONS, what="real_heal sweep")
    passed = [f"{k}={opts[k]}" for k in ("models", "data") if opts[k]]
    runs = []
    for seed in opts["seeds"]:
        for cell, lmbda in CELLS.items():
            parts = [f"lmbda={fmt_lmbda(lmbda)}", f"seed={seed}", *passed]
            parts += ["smoke"] if opts["smoke"] else []
            runs.append(
                Run(
                    name=f"real_heal_{cell}_lmbda{fmt_lmbda(lmbda)}_seed{seed}",
                    config=f"{CONFIG}:{','.join(parts)}",
                    axes={
                        "method": cell,
                        "lmbda": lmbda,
                        "divergence": "jsd0.5",
                        "seed": seed,
                        "student": "smollm2-135m 0-19,26-29",
                    },
                )  # fmt: skip
            )
    return runs
