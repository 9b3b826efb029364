"""The paper's grid for one of its tasks (TASKS: xsum, wmt_en_de and gsm8k are each a sweep of
that name, running configs/TASK.py): lmbda {0, 0.5, 1} x {fkl, jsd0.1, jsd0.5, jsd0.9, rkl} x
student {small, base, large}, plus its baselines, in two stages run one after the other:

    stage=sft  the supervised fine-tuning every GKD run starts from: one per student size, and
               the T5-XL teacher (the SFT runs are also the paper's "SFT" baseline)
    stage=gkd  (default) the 45 grid runs, SeqKD, ImitKD and f-distill per student size

    python launch/sweep.py --sweep=xsum:stage=sft --root=/mnt/gkd/xsum  # SFT: 3 students, teacher
    python launch/sweep.py --sweep=xsum --root=/mnt/gkd/xsum  # GKD: 45 grid + 9 baselines
    launch/tpu_sweep.sh xsum /mnt/gkd/xsum vm-0 vm-1 vm-2 -- --only=_small_  # fanned out
    python launch/collect.py --root=/mnt/gkd/xsum --out=docs/figures --name=xsum

and the same with wmt_en_de or gsm8k in place of xsum.

Each run is `CONFIG:student=SIZE,div=DIV,lmbda=L[,stage=...][,REST]`, the interface the paper
configs take; parts of the sweep arg that the sweep does not use itself (e.g. `models=DIR`,
`smoke`) are passed on to every config as REST. Sweep arg keys: stage=sft|gkd,
sizes=small+base (a `+` list), seeds=0+1, checkpoints=root|config. With checkpoints=root (the
default) every GKD run starts from the SFT stage's models in the same ROOT (the config part
`runs=ROOT`: ROOT/TASK_sft_student_SIZE/hf_model and ROOT/TASK_sft_teacher_xl/hf_model), so the
SFT stage runs once, not once per grid point; checkpoints=config leaves both to the config
(the hub models, or `models=DIR`).
"""

from sweeps.runs import DIVERGENCES, PAPER_LMBDAS, PAPER_SIZES, Run, fmt_lmbda, grid

from gkd_jax.config.arg import choice, parse_known_arg, plus_list

# The paper's tasks, each its own sweep (launch/sweeps/registry.py): the config it runs.
TASKS = {
    "xsum": "configs/xsum.py",  # ROUGE-2; T5 v1.1 LM-adapted students, T5-XL teacher
    "wmt_en_de": "configs/wmt_en_de.py",  # BLEU, beam search; T5 v1.1 LM-adapted, T5-XL
    "gsm8k": "configs/gsm8k.py",  # accuracy, 4-shot chain of thought; FLAN-T5, FLAN-T5-XL
}
TEACHER = "xl"
OPTIONS = {
    "stage": choice("sft", "gkd", default="gkd"),
    "sizes": plus_list(default=PAPER_SIZES, allowed=PAPER_SIZES),
    "seeds": plus_list(int, default=(0,)),
    "checkpoints": choice("root", "config", default="root"),
}
# The trainer flags for each baseline on top of `div=..,lmbda=..` (supervised KD is lmbda=0 of
# the grid): SeqKD trains on teacher samples, ImitKD on lmbda 0.5 with forward KL, f-distill is
# total variation at lmbda 0.5 (the paper's appendix).
BASELINES: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "seqkd": ("fkl", 0.0, ("--config.gkd.seq_kd=True",)),
    "imitkd": ("fkl", 0.5, ("--config.gkd.lmbda_schedule=imitkd",)),
    "fdistill": ("tv", 0.5, ()),
}


def parse_arg(arg: str) -> tuple[dict, str]:
    """(the sweep's own options, the rest of the arg for every run's config)."""
    opts, rest = parse_known_arg(arg, OPTIONS, what="sweep")
    return opts, ",".join(rest)


def paper_runs(task: str, config: str, arg: str = "") -> list[Run]:
    opts, rest = parse_arg(arg)
    tail = f",{rest}" if rest else ""
    runs = []
    if opts["stage"] == "sft":
        for size in (*opts["sizes"], TEACHER):
            role = "teacher" if size == TEACHER else "student"
            runs.append(
                Run(
                    name=f"{task}_sft_{role}_{size}",
                    config=f"{config}:stage=sft_{role},{role}={size}{tail}",
                    axes={"method": "sft", "student": size, "role": role, "seed": 0},
                )
            )
        return runs

    if opts["checkpoints"] == "root":  # Run.argv puts the sweep's root in for {root}
        tail += ",runs={root}"

    points = grid(
        student=opts["sizes"], lmbda=PAPER_LMBDAS, div=list(DIVERGENCES), seed=opts["seeds"]
    )
    for p in points:
        runs.append(
            Run(
                name=f"{task}_{p['student']}_lmbda{fmt_lmbda(p['lmbda'])}_{p['div']}_seed{p['seed']}",
                config=f"{config}:student={p['student']},div={p['div']},lmbda={p['lmbda']:g}{tail}",
                flags=(f"--config.seed={p['seed']}",),
                axes={
                    "method": "gkd",
                    "student": p["student"],
                    "lmbda": p["lmbda"],
                    "divergence": p["div"],
                    "seed": p["seed"],
                },
            )  # fmt: skip
        )
    for size, seed in [(s, seed) for s in opts["sizes"] for seed in opts["seeds"]]:
        for method, (div, lmbda, flags) in BASELINES.items():
            runs.append(
                Run(
                    name=f"{task}_{size}_{method}_seed{seed}",
                    config=f"{config}:student={size},div={div},lmbda={lmbda:g}{tail}",
                    flags=(*flags, f"--config.seed={seed}"),
                    axes={"method": method, "student": size, "seed": seed},
                )
            )
    return runs
