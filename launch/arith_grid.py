"""The README's results table: supervised KD vs on-policy GKD on arith, several betas and seeds.

    python launch/arith_grid.py --workdir=/tmp/arith-grid [--steps=300] [--seeds=0,1,2]

Runs configs/arith.py once per (lmbda, beta, seed), one after another in this process (a run
whose results.json exists is skipped, so the grid resumes), then writes WORKDIR/table.md with
mean and standard deviation over seeds of the held-out accuracy.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gkd_jax.config_loading import load_config_file  # noqa: E402
from gkd_jax.trainer import train_and_evaluate  # noqa: E402

LABELS = {0.0: "supervised KD (lmbda=0)", 1.0: "on-policy GKD (lmbda=1)"}
BETAS = {0.0: "forward KL", 0.5: "JSD(0.5)", 1.0: "reverse KL"}


def run_dir(workdir, lmbda, beta, seed):
    return os.path.join(workdir, f"lmbda{lmbda:g}_beta{beta:g}_seed{seed}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config", default=os.path.join(HERE, "..", "configs", "arith.py"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lmbdas", default="0,1")
    ap.add_argument("--betas", default="0,0.5,1")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lmbdas = [float(x) for x in args.lmbdas.split(",")]
    betas = [float(x) for x in args.betas.split(",")]
    results = {}
    for lmbda in lmbdas:
        for beta in betas:
            for seed in seeds:
                out = run_dir(args.workdir, lmbda, beta, seed)
                path = os.path.join(out, "results.json")
                if not os.path.exists(path):
                    config = load_config_file(args.config)
                    config.unlock()
                    config.seed, config.gkd.lmbda, config.gkd.beta = seed, lmbda, beta
                    if args.steps:
                        config.steps = args.steps
                    print(f"=== lmbda={lmbda:g} beta={beta:g} seed={seed}", flush=True)
                    train_and_evaluate(config, out)
                with open(path) as f:
                    results[lmbda, beta, seed] = json.load(f)
    write_table(args.workdir, results, lmbdas, betas, seeds)


def write_table(workdir, results, lmbdas, betas, seeds):
    any_run = next(iter(results.values()))
    steps = any_run["steps"]
    cell = lambda xs: f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs):.1f}"  # noqa: E731
    lines = [
        f"Held-out accuracy (%), greedy, mean ± std over seeds {seeds}; {steps} distillation "
        "steps of batch 64 from the same SFT student.",
        "",
        "| model | " + " | ".join(BETAS[b] for b in betas) + " |",
        "|---|" + "---|" * len(betas),
    ]
    teacher = [r["scores"]["teacher"] for r in results.values()]
    start = [r["scores"]["start"] for r in results.values()]
    lines.append(f"| teacher (0.8M) | {cell(teacher)} |" + " |" * (len(betas) - 1))
    lines.append(f"| student SFT start (60k) | {cell(start)} |" + " |" * (len(betas) - 1))
    for lmbda in lmbdas:
        row = [cell([results[lmbda, b, s]["scores"]["final"] for s in seeds]) for b in betas]
        lines.append(f"| {LABELS.get(lmbda, f'lmbda={lmbda:g}')} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
