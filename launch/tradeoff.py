"""The reward vs divergence-to-teacher trade-off of an RL + GKD sweep (launch/sweeps/arith_rl.py):
one point per cell, mean over seeds.

    python launch/tradeoff.py --root=/tmp/arith-rl --out=docs/figures --name=arith_rl

Reads what launch/collect.py reads (ROOT/*/sweep_run.json, results.json, metrics.jsonl) for runs
whose axes name a `cell`, and writes under OUT:
  NAME.png  the held-out metric (y) against the exact reverse KL of the student's completions
            from the teacher (x, results.json "divergence_to_teacher"), one marker per cell, error
            bars the seeds' standard deviation; the SFT start and the teacher's score marked
  NAME.md   per cell: the held-out metric, the divergence, the last logged training reward and
            KL to the starting student (policy-gradient cells log them), and the metric's gap to
            the pure-GKD cell with 2 standard errors (docs/results/arith_rl.md's criterion)
"""

import argparse
import collections
import os
import statistics
import sys
from typing import Any

from collect import cell, gap_cell, load_runs, mean_std, plt, scale_of, shared_cell

TRAINING = ("reward", "kl_to_start")  # last logged value of these metrics.jsonl keys
REFERENCE_CELL = "a1_jsd0.5"  # pure GKD: the gap column's reference


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell (by alpha, then name): lists over seeds of the scaled final
    metric ("metric"), the final divergence to the teacher ("divergence") and the last logged
    training metrics; the teacher's and the SFT start's scores; the start's divergence."""
    # Cells by alpha (pure RL first), then name: the order the trade-off reads in.
    runs = sorted(
        (r for r in runs if "cell" in r["axes"]),
        key=lambda r: (float(r["axes"].get("alpha", 1.0)), r["axes"]["cell"]),
    )
    if not runs:
        raise SystemExit("no finished run has a `cell` axis (launch/sweeps/arith_rl.py)")
    metric = runs[0]["results"]["metric"]
    scale = scale_of(metric)
    cells: dict[str, dict[str, list[float]]] = {}
    teacher, start, start_div = [], [], []
    for run in runs:
        res, axes = run["results"], run["axes"]
        c = cells.setdefault(axes["cell"], collections.defaultdict(list))
        c["metric"].append(scale * res["scores"]["final"])
        div = res.get("divergence_to_teacher", {})
        if "final" in div:
            c["divergence"].append(div["final"])
        if "start" in div:
            start_div.append(div["start"])
        for key in TRAINING:
            logged = [row[key] for row in run["curve"] if key in row]
            if logged:
                c[key].append(logged[-1])
        teacher += [scale * res["scores"]["teacher"]] if "teacher" in res["scores"] else []
        start.append(scale * res["scores"]["start"])
    return dict(metric=metric, unit="%" if scale == 100.0 else "", cells=cells,
                teacher=teacher, start=start, start_div=start_div)  # fmt: skip


def precise(values: list[float]) -> str:
    """A divergence or reward: 3 decimals (cell()'s one suits percentages)."""
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {std:.3f}"


def write_table(s: dict[str, Any], path: str) -> str:
    unit = f" ({s['unit']})" if s["unit"] else ""
    ref = s["cells"].get(REFERENCE_CELL, {}).get("metric", [])
    seeds = sorted({len(c["metric"]) for c in s["cells"].values()})
    lines = [
        f"Held-out {s['metric']}{unit} and reverse KL(student‖teacher) per token on the "
        f"student's greedy completions, mean ± std over {'/'.join(map(str, seeds))} seeds; "
        f"teacher {shared_cell(s['teacher']) if s['teacher'] else '-'}, SFT start "
        f"{shared_cell(s['start'])} (reverse KL {precise(sorted(set(s['start_div']))) or '-'}).",
        "",
        f"| cell | {s['metric']}{unit} | reverse KL to teacher | training reward (last) "
        f"| KL to start (last) | {s['metric']} − {REFERENCE_CELL} (± 2 SE) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in s["cells"].items():
        gap = ""
        if name != REFERENCE_CELL and c["metric"] and ref:
            one_seed = min(len(c["metric"]), len(ref)) < 2  # no standard error yet
            diff = statistics.fmean(c["metric"]) - statistics.fmean(ref)
            gap = f"{diff:+.1f} (1 seed)" if one_seed else gap_cell(c["metric"], ref)
        row = [cell(c["metric"]), precise(c["divergence"]), precise(c["reward"]),
               precise(c["kl_to_start"]), gap]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot(s: dict[str, Any], path: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, c in s["cells"].items():
        if not c["divergence"]:
            continue
        (x, dx), (y, dy) = mean_std(c["divergence"]), mean_std(c["metric"])
        ax.errorbar([x], [y], xerr=[dx], yerr=[dy], marker="o", capsize=3, label=name)
    if s["start_div"]:
        ax.plot([statistics.fmean(s["start_div"])], [statistics.fmean(s["start"])], "k*",
                ms=10, label="SFT start")  # fmt: skip
    if s["teacher"]:
        ax.axhline(statistics.fmean(s["teacher"]), color="gray", ls=":", lw=1, label="teacher")
    ax.set_xlabel("reverse KL(student ‖ teacher) per token, held-out")
    unit = f" ({s['unit']})" if s["unit"] else ""
    ax.set_ylabel(f"held-out {s['metric']}{unit} (= exact-answer reward)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="the sweep's ROOT (one directory per run)")
    ap.add_argument("--out", required=True, help="where the figure and the table go")
    ap.add_argument("--name", default="tradeoff", help="file stem: NAME.png, NAME.md")
    ap.add_argument("--only", default=None, help="regex: collect only the runs whose name matches")
    args = ap.parse_args(argv)
    runs, missing = load_runs(args.root, args.only)
    if missing:
        print(f"{len(missing)} runs have no results.json yet (left out): {missing}")
    s = summarize(runs)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    print(write_table(s, stem + ".md"))
    plot(s, stem + ".png")
    print(f"wrote {stem}.md, {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
