"""Figures and a Markdown table from a sweep's run directories (launch/sweep.py's ROOT).

    python launch/collect.py --root=/tmp/arith-sweep --out=docs/figures --name=arith_sweep \
        [--only=REGEX]

Reads ROOT/*/sweep_run.json (the run's axes), results.json (its scores) and metrics.jsonl (its
training curve), and writes, under OUT:
  NAME.png         the paper's figure style: final metric vs divergence, one line per lmbda,
                   one panel per student size (the teacher's score in its title); the SFT
                   start and any baselines (SeqKD, ImitKD, f-distill, ...) as horizontal
                   lines; mean over seeds with the seeds' standard deviation as error bars
  NAME_curves.png  training loss vs step, one panel per (student size, lmbda), one line per
                   divergence (seed 0 or the first seed)
  NAME.md          the same numbers as a table (mean ± std over seeds where there are several)
With --vs=AXIS (a numeric axis of the runs, e.g. n_distill), instead: NAME.png the final metric
vs that axis (log scale), one line per lmbda, and NAME.md its table.
Runs without results.json yet (still training) are listed as missing and left out.
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a TPU VM or in CI
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from gkd_jax.evaluation.comparison import lmbda_label  # noqa: E402

# Scores the trainer reports as fractions but papers print as percentages (ROUGE and BLEU
# already come as 0-100 from gkd_jax.evaluation.metrics).
PERCENT_METRICS = ("accuracy",)
DIVERGENCE_LABELS = {
    "fkl": "FKL", "jsd0.1": "JSD(0.1)", "jsd0.5": "JSD(0.5)", "jsd0.9": "JSD(0.9)", "rkl": "RKL",
    "tv": "TV",
}  # fmt: skip
BASELINE_LABELS = {"sft": "SFT", "seqkd": "SeqKD", "imitkd": "ImitKD", "fdistill": "f-distill"}


def load_runs(root: str, only: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every finished run under `root` (whose name matches `only`) as {name, axes, results,
    curve}; and the unfinished names."""
    runs, missing = [], []
    for spec_path in sorted(glob.glob(os.path.join(root, "*", "sweep_run.json"))):
        workdir = os.path.dirname(spec_path)
        with open(spec_path) as f:
            spec = json.load(f)
        if only and not re.search(only, spec["name"]):
            continue
        results_path = os.path.join(workdir, "results.json")
        if not os.path.exists(results_path):
            missing.append(spec["name"])
            continue
        with open(results_path) as f:
            results = json.load(f)
        runs.append(
            {"name": spec["name"], "axes": spec["axes"], "results": results,
             "curve": read_curve(os.path.join(workdir, "metrics.jsonl"))}
        )  # fmt: skip
    return runs, missing


def read_curve(path: str) -> list[dict[str, float]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scale_of(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def mean_std(values: list[float]) -> tuple[float, float]:
    # Population std, as the results pages' seed tables have it; 0 for a single seed.
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


def gap(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of the means of a and b, and twice its standard error (sample standard
    deviations; 0 where an arm has one run)."""
    var = sum(statistics.variance(x) / len(x) for x in (a, b) if len(x) > 1)
    return statistics.fmean(a) - statistics.fmean(b), 2 * var**0.5


def gap_cell(a: list[float], b: list[float]) -> str:
    """'+3.1 ± 1.2 *': the results pages' win criterion, * where the gap exceeds 2 SE."""
    if not a or not b:
        return ""
    d, two_se = gap(a, b)
    mark = " *" if len(a) > 1 and len(b) > 1 and abs(d) > two_se else ""
    return f"{d:+.1f} ± {two_se:.1f}{mark}"


def shared_cell(values: list[float]) -> str:
    """The teacher's or the SFT start's score, which every run of a student evaluates again:
    one number when they agree (they should: same checkpoint, same held-out set)."""
    return f"{values[0]:.1f}" if len(set(values)) == 1 else cell(values)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Group the scaled final scores: gkd[(student, lmbda, divergence)], baselines[(student,
    method)], and the teacher and SFT start scores per student (lists over runs/seeds)."""
    metric = runs[0]["results"]["metric"]
    scale = scale_of(metric)
    gkd, baselines = collections.defaultdict(list), collections.defaultdict(list)
    teacher, start = collections.defaultdict(list), collections.defaultdict(list)
    runs = [r for r in runs if r["axes"].get("role") != "teacher"]  # its score is in every run
    for run in runs:
        axes, scores = run["axes"], run["results"]["scores"]
        student = str(axes.get("student", ""))
        if axes.get("method", "gkd") == "gkd":
            gkd[student, float(axes["lmbda"]), axes["divergence"]].append(scale * scores["final"])
        else:
            baselines[student, axes["method"]].append(scale * scores["final"])
        if "teacher" in scores:
            teacher[student].append(scale * scores["teacher"])
        if "start" in scores and run["results"].get("objective") != "sft":
            start[student].append(scale * scores["start"])
    students = sorted({k[0] for k in gkd} | {k[0] for k in baselines}, key=size_order)
    lmbdas = sorted({k[1] for k in gkd})
    present = {k[2] for k in gkd}
    divergences = [d for d in DIVERGENCE_LABELS if d in present] + sorted(
        present - set(DIVERGENCE_LABELS)
    )
    methods = sorted({k[1] for k in baselines})
    seeds = sorted({run["axes"].get("seed", 0) for run in runs})
    return dict(
        metric=metric, unit="%" if scale == 100.0 else "", gkd=gkd, baselines=baselines,
        teacher=teacher, start=start, students=students, lmbdas=lmbdas,
        divergences=divergences, methods=methods, seeds=seeds,
        steps=sorted({run["results"]["steps"] for run in runs}),
    )  # fmt: skip


def size_order(student: str) -> tuple[int, str]:
    order = ["small", "base", "large", "xl"]
    return (order.index(student), student) if student in order else (len(order), student)


def write_table(s: dict[str, Any], path: str) -> str:
    unit = f" ({s['unit']})" if s["unit"] else ""
    seeds = s["seeds"]
    spread = (
        f"mean ± std over seeds {seeds} (a cell without ± has one run)"
        if len(seeds) > 1
        else f"seed {seeds[0]}"
    )
    lines = [
        f"Final {s['metric']}{unit}, {spread}; {'/'.join(map(str, s['steps']))} steps per run.",
        "",
        "| student | model | " + " | ".join(DIVERGENCE_LABELS.get(d, d) for d in s["divergences"])
        + " |",
        "|---|---|" + "---|" * len(s["divergences"]),
    ]  # fmt: skip
    blank = " |" * (len(s["divergences"]) - 1)
    for student in s["students"]:
        if s["teacher"][student]:
            lines.append(f"| {student} | teacher | {shared_cell(s['teacher'][student])} |{blank}")
        if s["start"][student]:
            lines.append(
                f"| {student} | student start (SFT) | {shared_cell(s['start'][student])} |{blank}"
            )
        for lmbda in s["lmbdas"]:
            row = [cell(s["gkd"][student, lmbda, d]) for d in s["divergences"]]
            lines.append(f"| {student} | GKD {lmbda_label(lmbda)} | " + " | ".join(row) + " |")
        if {0.0, 1.0} <= set(s["lmbdas"]):
            row = [gap_cell(s["gkd"][student, 1.0, d], s["gkd"][student, 0.0, d])
                   for d in s["divergences"]]  # fmt: skip
            lines.append(f"| {student} | λ=1 − λ=0 (± 2 SE) | " + " | ".join(row) + " |")
        for method in s["methods"]:
            values = s["baselines"][student, method]
            if values:
                label = BASELINE_LABELS.get(method, method)
                lines.append(f"| {student} | {label} | {cell(values)} |{blank}")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot_scores(s: dict[str, Any], path: str) -> None:
    n = len(s["students"])
    fig, axs = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False, sharey=True)
    x = range(len(s["divergences"]))
    for ax, student in zip(axs[0], s["students"], strict=True):
        for lmbda in s["lmbdas"]:
            points = [s["gkd"][student, lmbda, d] for d in s["divergences"]]
            xs = [i for i, p in zip(x, points, strict=True) if p]
            stats = [mean_std(p) for p in points if p]
            ax.errorbar(
                xs, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", capsize=3,
                label=lmbda_label(lmbda),
            )  # fmt: skip
        # The teacher goes in the title, not as a line: far above the students (99 vs ~70 on
        # arith) it would squash their differences into a sliver of the panel.
        refs = [("student start (SFT)", s["start"][student], "gray", ":")]
        # Colors after the lmbda lines' (C0, C1, ...), so no baseline shares one with a line.
        for i, m in enumerate(s["methods"]):
            color = f"C{len(s['lmbdas']) + i}"
            refs.append((BASELINE_LABELS.get(m, m), s["baselines"][student, m], color, "-."))
        for label, values, color, style in refs:
            if values:
                ax.axhline(mean_std(values)[0], color=color, linestyle=style, lw=1, label=label)
        ax.set_xticks(
            list(x), [DIVERGENCE_LABELS.get(d, d) for d in s["divergences"]], fontsize=8
        )  # fmt: skip
        title = f"student {student}" if student else "student"
        if s["teacher"][student]:
            title += f" (teacher {mean_std(s['teacher'][student])[0]:.1f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("divergence")
        ax.grid(alpha=0.3)
    unit = f" ({s['unit']})" if s["unit"] else ""
    axs[0][0].set_ylabel(f"{s['metric']}{unit}")
    axs[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_curves(runs: list[dict[str, Any]], s: dict[str, Any], path: str) -> None:
    seed = s["seeds"][0]
    rows, cols = len(s["students"]), max(len(s["lmbdas"]), 1)
    fig, axs = plt.subplots(
        rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharex=True
    )  # fmt: skip
    for run in runs:
        axes = run["axes"]
        if axes.get("method", "gkd") != "gkd" or axes.get("seed", 0) != seed or not run["curve"]:
            continue
        r = s["students"].index(str(axes.get("student", "")))
        c = s["lmbdas"].index(float(axes["lmbda"]))
        steps = [row["step"] for row in run["curve"]]
        axs[r][c].plot(
            steps,
            [row["loss"] for row in run["curve"]],
            label=DIVERGENCE_LABELS.get(axes["divergence"], axes["divergence"]),
        )
    for r, student in enumerate(s["students"]):
        for c, lmbda in enumerate(s["lmbdas"]):
            ax = axs[r][c]
            ax.set_title(f"{student + ', ' if student else ''}{lmbda_label(lmbda)}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
                # The divergences' losses differ by orders of magnitude (RKL vs JSD(0.1)).
                if all(min(line.get_ydata()) > 0 for line in ax.lines):
                    ax.set_yscale("log")
        axs[r][0].set_ylabel("training loss (own divergence)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize_vs(runs: list[dict[str, Any]], axis: str) -> dict[str, Any]:
    """Final scores of the GKD runs that have `axis`, grouped as points[lmbda][axis value]."""
    runs = [r for r in runs if r["axes"].get("method", "gkd") == "gkd" and axis in r["axes"]]
    if not runs:
        raise SystemExit(f"--vs={axis}: no finished GKD run has the axis {axis!r}")
    metric = runs[0]["results"]["metric"]
    points = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in runs:
        value = scale_of(metric) * run["results"]["scores"]["final"]
        points[float(run["axes"]["lmbda"])][float(run["axes"][axis])].append(value)
    teacher = [scale_of(metric) * r["results"]["scores"]["teacher"] for r in runs
               if "teacher" in r["results"]["scores"]]  # fmt: skip
    start = [scale_of(metric) * r["results"]["scores"]["start"] for r in runs]
    return dict(metric=metric, axis=axis, points=points, teacher=teacher, start=start,
                unit="%" if scale_of(metric) == 100.0 else "")  # fmt: skip


def write_vs(s: dict[str, Any], path: str) -> str:
    values = sorted({x for by_x in s["points"].values() for x in by_x})
    unit = f" ({s['unit']})" if s["unit"] else ""
    teacher = shared_cell(s["teacher"]) if s["teacher"] else "-"
    both = {0.0, 1.0} <= set(s["points"])
    lines = [
        f"Final {s['metric']}{unit} vs {s['axis']}, mean ± std over seeds; teacher {teacher}, "
        f"SFT start {shared_cell(s['start'])}.",
        "",
        f"| {s['axis']} | "
        + " | ".join(lmbda_label(lm) for lm in sorted(s["points"]))
        + (" | λ=1 − λ=0 (± 2 SE) |" if both else " |"),
        "|---|" + "---|" * (len(s["points"]) + both),
    ]
    for x in values:
        row = [cell(s["points"][lm].get(x, [])) for lm in sorted(s["points"])]
        if both:  # the results pages' win criterion at each point of the axis
            row.append(gap_cell(s["points"][1.0].get(x, []), s["points"][0.0].get(x, [])))
        lines.append(f"| {x:g} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot_vs(s: dict[str, Any], path: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for lmbda in sorted(s["points"]):
        xs = sorted(s["points"][lmbda])
        stats = [mean_std(s["points"][lmbda][x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o",
                    capsize=3, label=lmbda_label(lmbda))  # fmt: skip
    ax.axhline(mean_std(s["start"])[0], color="gray", ls=":", lw=1, label="student start (SFT)")
    ax.set_xscale("log")
    ax.set_xlabel(s["axis"])
    unit = f" ({s['unit']})" if s["unit"] else ""
    ax.set_ylabel(f"{s['metric']}{unit}")
    if s["teacher"]:
        ax.set_title(f"teacher {mean_std(s['teacher'])[0]:.1f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="the sweep's ROOT (one directory per run)")
    ap.add_argument("--out", required=True, help="where the figures and the table go")
    ap.add_argument(
        "--name", default="results", help="file stem: NAME.png, NAME_curves.png, NAME.md"
    )
    ap.add_argument("--only", default=None, help="regex: collect only the runs whose name matches")
    ap.add_argument("--vs", default=None, help="plot the metric against this numeric run axis")
    args = ap.parse_args(argv)
    runs, missing = load_runs(args.root, args.only)
    if missing:
        print(f"{len(missing)} runs have no results.json yet (left out): {missing}")
    if not runs:
        print(f"no finished runs under {args.root} (each needs sweep_run.json + results.json)")
        return 1
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    if args.vs:
        s = summarize_vs(runs, args.vs)
        print(write_vs(s, stem + ".md"))
        plot_vs(s, stem + ".png")
        print(f"wrote {stem}.md, {stem}.png")
        return 0
    s = summarize(runs)
    print(write_table(s, stem + ".md"))
    plot_scores(s, stem + ".png")
    plot_curves(runs, s, stem + "_curves.png")
    print(f"wrote {stem}.md, {stem}.png, {stem}_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
