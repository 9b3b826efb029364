"""The paper's data regime on arith: a finite training set of N problems that the teacher and the
SFT student were fine-tuned on and that distillation reuses epoch after epoch (GSM8K in the paper:
7,473 problems, ~171 epochs of GKD). The protocol, fixed before any of these runs:
docs/results/arith.md, "the paper's data regime".

    python launch/sweep.py --sweep=arith_finite:seeds=0+1+2 --root=/tmp/arith-finite --parallel=2
    python launch/collect.py --root=/tmp/arith-finite --out=docs/figures --name=arith_finite \
        --only='^arith_n2000_(lmbda|sft|seqkd|imitkd|fdistill)'
    python launch/collect.py --root=/tmp/arith-finite --out=docs/figures --name=arith_nsweep \
        --only='^arith_n2000_(d\\d+_)?lmbda[01]_jsd0.5_seed' --vs=n_distill

Every run: `configs/arith.py:n=2000` (the shipped `builtin:arith/n2000` teacher and SFT student),
STEPS steps x 64 (same compute for all), evaluated on the 500 held-out test problems, greedy, at
the last step. `:arg` is a comma list: `seeds=0+1+2` (default 0), `parts=grid+nsweep+baselines+
temps` (default all four; get_runs gives the run order), `smoke` (a seconds-long CPU
config, for tests).

  grid       lmbda {0, 0.5, 1} x {fkl, jsd0.1, jsd0.5, jsd0.9, rkl}
  baselines  SFT only (more supervised steps on the same targets), SeqKD, ImitKD, f-distill
  nsweep     lmbda {0, 1} x JSD(0.5) distilled on N_d problems, N_d in NSWEEP (the teacher and
             the SFT student stay the N=2000 ones; N_d = 2000 is the grid's cell); "unlimited" is
             N_d = STEPS x 64 with each problem seen once
  temps      JSD(0.5): teacher temperature 0.1 in the loss at lmbda {0, 1}, and the student's
             sampling temperature {0.5, 1.5} at lmbda 1 (1.0 is the grid's cell)
"""

from sweeps.runs import DIVERGENCES, PAPER_LMBDAS, Run, fmt_lmbda, grid

from gkd_jax.config.arg import flag, parse_arg, plus_list

N = 2000
STEPS = 600  # x 64 = 38,400 examples: 19 epochs of the 2,000 problems
BATCH = 64
UNLIMITED = STEPS * BATCH
NSWEEP = (250, 500, 1000, 8000, UNLIMITED)  # 154, 77, 38, 5 epochs; 1 pass
PARTS = ("grid", "nsweep", "baselines", "temps")  # the order they run in
OPTIONS = {
    "seeds": plus_list(int, default=(0,)),
    "parts": plus_list(default=PARTS, allowed=PARTS),
    "smoke": flag(),
}
PREFIX = f"arith_n{N}"
# Flags on top of `div` for each baseline (supervised KD is lmbda=0 of the grid; "sft" trains
# on the dataset's targets alone, from the same SFT student, for the same steps).
BASELINES: dict[str, tuple[str, ...]] = {
    "sft": ("--config.objective=sft",),
    "seqkd": ("--config.gkd.lmbda=0", "--config.gkd.seq_kd=True", *DIVERGENCES["fkl"]),
    "imitkd": ("--config.gkd.lmbda_schedule=imitkd", *DIVERGENCES["fkl"]),
    "fdistill": ("--config.gkd.lmbda=0.5", "--config.gkd.divergence=tv"),
}


def gkd_run(name: str, lmbda: float, div: str, seed: int, config: str, *flags: str, **axes) -> Run:
    axes = {"n_distill": N, "teacher_temperature": 1.0, "sampling_temperature": 1.0} | axes
    return Run(
        name=f"{PREFIX}_{name}seed{seed}",
        config=config,
        flags=(f"--config.gkd.lmbda={lmbda:g}", *DIVERGENCES[div], *flags, f"--config.seed={seed}"),
        axes={"method": "gkd", "student": f"60k, N={N}", "lmbda": lmbda, "divergence": div,
              "seed": seed, **axes},
    )  # fmt: skip


def get_runs(arg: str = "") -> list[Run]:
    opts = parse_arg(arg, OPTIONS, what="arith_finite sweep")
    config = f"configs/arith.py:n={N}" + (",smoke" if opts["smoke"] else "")
    # One run per workdir: no supervised-KD comparison run inside each (configs/arith.py's).
    common = ("--config.compare_lmbdas=",)
    if not opts["smoke"]:
        common += (f"--config.steps={STEPS}", f"--config.batch_size={BATCH}")
    runs = []
    seeds, parts = opts["seeds"], opts["parts"]
    # Run order: the comparison that decides the protocol's question (lmbda 0 vs 1, divergence
    # by divergence) first, then the N-sweep, then lmbda 0.5, the baselines, the temperatures.
    mixed = []
    if "grid" in parts:
        for p in grid(div=list(DIVERGENCES), lmbda=PAPER_LMBDAS, seed=seeds):
            name = f"lmbda{fmt_lmbda(p['lmbda'])}_{p['div']}_"
            run = gkd_run(name, p["lmbda"], p["div"], p["seed"], config, *common)
            (mixed if p["lmbda"] == 0.5 else runs).append(run)
    if "nsweep" in parts:
        for p in grid(n=NSWEEP, lmbda=(0.0, 1.0), seed=seeds):
            name = f"d{p['n']}_lmbda{fmt_lmbda(p['lmbda'])}_jsd0.5_"
            flags = (*common, f"--config.data.train_examples={p['n']}")
            runs.append(gkd_run(name, p["lmbda"], "jsd0.5", p["seed"], config, *flags,
                                n_distill=p["n"]))  # fmt: skip
    runs += mixed
    if "baselines" in parts:
        for seed in seeds:
            for method, flags in BASELINES.items():
                runs.append(
                    Run(
                        name=f"{PREFIX}_{method}_seed{seed}",
                        config=config,
                        flags=(*common, *flags, f"--config.seed={seed}"),
                        axes={"method": method, "student": f"60k, N={N}", "seed": seed},
                    )
                )
    if "temps" in parts:
        for seed in seeds:
            for lmbda in (0.0, 1.0):
                name = f"tT0.1_lmbda{fmt_lmbda(lmbda)}_jsd0.5_"
                runs.append(gkd_run(name, lmbda, "jsd0.5", seed, config, *common,
                                    "--config.gkd.teacher_temperature=0.1",
                                    teacher_temperature=0.1))  # fmt: skip
            for temp in (0.5, 1.5):
                name = f"sT{temp:g}_lmbda1_jsd0.5_"
                runs.append(gkd_run(name, 1.0, "jsd0.5", seed, config, *common,
                                    f"--config.sampling.temperature={temp:g}",
                                    sampling_temperature=temp))  # fmt: skip
    return runs
