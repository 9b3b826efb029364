"""RL + GKD on arith (issue 13): the exact-answer reward against closeness to the teacher. The
protocol, fixed before any of these runs: docs/results/arith_rl.md.

    python launch/sweep.py --sweep=arith_rl:seeds=0+1+2 --root=/tmp/arith-rl --parallel=2
    python launch/tradeoff.py --root=/tmp/arith-rl --out=docs/figures --name=arith_rl

Every run: `configs/arith.py:n=2000` (the shipped teacher and SFT student of the paper-regime
study), STEPS steps x 64 sampled completions (same compute in every cell), learning rate LR,
on-policy (lmbda 1), evaluated greedy on the 500 held-out problems with the exact reverse KL of
the student's completions from the teacher beside the accuracy (eval.divergence_to_teacher).

  a0          pure RL: REINFORCE on the exact-answer reward, leave-one-out baseline, 4 samples
              a prompt (16 prompts x 4 a step)
  a0.5        half reward, half GKD JSD(0.5) on the same samples (the paper's Section 5 mix)
  a1_jsd0.5   pure GKD, JSD(0.5) (the GKD step as is, 64 prompts a step)
  a1_rkl      pure GKD, the full-distribution reverse KL
  a1_srkl     pure GKD, the sampled-token reverse KL (policy gradient of log p_S - log p_T on
              the student's own tokens, one sample a prompt)
  ref_lr1e-3  a1_jsd0.5 at the arith config's own learning rate (1e-3): where GKD gets to when
              its rate is not held to RL's

`:arg`: `seeds=0+1+2` (default 0), `smoke` (a seconds-long CPU config, for tests).
"""

from sweeps.runs import DIVERGENCES, Run

from gkd_jax.config.arg import flag, parse_arg, plus_list

STEPS = 300  # x 64 = 19,200 completions: the default run's budget
BATCH = 64
LR = 1e-4  # REINFORCE's: 1e-3 lost reward at alpha 0.5 (docs/results/arith_rl.md)
OPTIONS = {"seeds": plus_list(int, default=(0,)), "smoke": flag()}
RL = ("--config.rl.reward=exact_answer", "--config.rl.num_samples=4", "--config.rl.baseline=loo")
# cell -> (alpha, divergence name for the axes, its flags)
CELLS: dict[str, tuple[float, str, tuple[str, ...]]] = {
    "a0": (0.0, "none", ("--config.rl.alpha=0", *RL, *DIVERGENCES["jsd0.5"])),
    "a0.5": (0.5, "jsd0.5", ("--config.rl.alpha=0.5", *RL, *DIVERGENCES["jsd0.5"])),
    "a1_jsd0.5": (1.0, "jsd0.5", DIVERGENCES["jsd0.5"]),
    "a1_rkl": (1.0, "rkl", DIVERGENCES["rkl"]),
    "a1_srkl": (
        1.0,
        "sampled_rkl",
        ("--config.gkd.divergence=sampled_rkl", "--config.rl.num_samples=1"),
    ),
    "ref_lr1e-3": (1.0, "jsd0.5", (*DIVERGENCES["jsd0.5"], "--config.optim.learning_rate=1e-3")),
}


def get_runs(arg: str = "") -> list[Run]:
    opts = parse_arg(arg, OPTIONS, what="arith_rl sweep")
    config = "configs/arith.py:n=2000" + (",smoke" if opts["smoke"] else "")
    common = (
        "--config.compare_lmbdas=",
        "--config.gkd.lmbda=1",
        "--config.eval.divergence_to_teacher=rkl",
        f"--config.optim.learning_rate={LR:g}",
    )
    if not opts["smoke"]:
        common += (f"--config.steps={STEPS}", f"--config.batch_size={BATCH}")
    runs = []
    for seed in opts["seeds"]:  # seed-major: a partial study has every cell at seed 0 first
        for cell, (alpha, divergence, flags) in CELLS.items():
            runs.append(
                Run(
                    name=f"arith_rl_{cell}_seed{seed}",
                    config=config,
                    flags=(*common, *flags, f"--config.seed={seed}"),
                    axes={
                        "method": "rl+gkd",
                        "cell": cell,
                        "alpha": alpha,
                        "divergence": divergence,
                        "seed": seed,
                    },
                )  # fmt: skip
            )
    return runs
