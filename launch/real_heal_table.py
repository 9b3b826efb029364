"""The real-model healing study's table (docs/results/real_heal_protocol.md) from its sweep
root.

    python launch/real_heal_table.py --root=$HOME/real_heal_sweep [--data=$HOME/real_heal_data] \
        [--out=docs/results/real_heal.md]

Reads ROOT/*/sweep_run.json and results.json (launch/sweep.py's), and prints Markdown: one row
per cell (SeqKD lmbda 0, GKD lmbda 1, mixed 0.5) of the final evaluation, mean ± sample std over
its finished seeds (n), beside the pruned student before healing and the teacher (whose held-out
replies are the references: RKL 0, its answer accuracy read from DATA/heldout.jsonl); then
answer accuracy per family; then the protocol's verdict (`verdict`). Runs still training are
listed as missing.
"""

import argparse
import json
import os
import statistics
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from collect import load_runs  # noqa: E402

from gkd_jax.evaluation.metrics import answer_scores  # noqa: E402
from gkd_jax.evaluation.reply_stats import NAMES, ReplyStats, collapse_evidence  # noqa: E402

CELLS = {"seqkd": "SeqKD (lmbda 0)", "gkd": "GKD (lmbda 1)", "mixed": "mixed (lmbda 0.5)"}
# (results key, column, format); lower is better for the first five, the teacher's own = 0.
COLUMNS = (
    ("rkl_to_teacher", "RKL own replies", ".4f"),
    ("on_policy_jsd", "JSD own replies", ".4f"),
    ("reference_nll", "NLL teacher replies", ".4f"),
    ("teacher_forced_rkl_to_teacher", "RKL teacher replies", ".4f"),
    ("teacher_forced_jsd", "JSD teacher replies", ".4f"),
    ("answer_accuracy", "answer acc.", ".3f"),
    ("reply_tokens", "reply tokens", ".1f"),
    ("reply_stopped", "stopped", ".2f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("repetitive_replies", "repetitive", ".2f"),
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell_stats(runs: list[dict], key: str) -> dict[str, tuple[float, float, int]]:
    """cell -> (mean, std, n) of the final evaluation's `key` over the cell's seeds."""
    out = {}
    for cell in CELLS:
        vals = [
            r["results"]["evaluations"]["final"][key]
            for r in runs
            if r["axes"].get("method") == cell and key in r["results"]["evaluations"]["final"]
        ]
        if vals:
            out[cell] = (*mean_std(vals), len(vals))
    return out


def teacher_scores(data: str, n: int) -> dict[str, float]:
    """The teacher's answer accuracy on the first n held-out records (its replies are them)."""
    path = os.path.join(data, "heldout.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()][:n]
    replies = [r["messages"][-1]["content"] for r in recs]
    answers = [None if r.get("answer") is None else str(r["answer"]) for r in recs]
    return answer_scores(replies, answers, [r.get("family") for r in recs]) | {
        "rkl_to_teacher": 0.0, "on_policy_jsd": 0.0,
        "teacher_forced_rkl_to_teacher": 0.0, "teacher_forced_jsd": 0.0,
    }  # fmt: skip


def degenerate(run: dict) -> bool:
    """Whether a run's final replies look collapsed (the trainer's warning, recomputed from
    results.json) or are mostly repetitive (repetitive_replies > 0.5): the protocol's veto."""
    res = run["results"]
    final, ref = res["evaluations"]["final"], res.get("reference_replies")
    if final.get("repetitive_replies", 0.0) > 0.5:
        return True
    if ref is None or not all(k in final for k in NAMES):
        return False
    stats, refs = (ReplyStats(**{k: d[k] for k in NAMES}, top_token=-1) for d in (final, ref))
    return bool(collapse_evidence(stats, refs))


def overlap(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Whether the mean ± std intervals of a and b overlap."""
    return a[0] - a[1] <= b[0] + b[1] and b[0] - b[1] <= a[0] + a[1]


def verdict(
    stats: dict[str, dict],
    challenger: str,
    baseline: str = "seqkd",
    vetoed: frozenset = frozenset(),
) -> str:
    """The protocol's call (docs/results/real_heal_protocol.md): `challenger` beats `baseline`
    when its mean RKL on its own replies is lower with non-overlapping ±1 std intervals AND its
    reference_nll is not worse (its interval overlaps the baseline's, or lies below it), and none
    of its seeds' replies are degenerate (`vetoed`: the cells where one is)."""
    rkl, nll = stats["rkl_to_teacher"], stats["reference_nll"]
    if challenger not in rkl or baseline not in rkl or baseline not in nll:
        return f"{CELLS[challenger]} vs {CELLS[baseline]}: not enough runs yet"
    c, b = rkl[challenger], rkl[baseline]
    lower = c[0] < b[0] and not overlap(c, b)
    higher = c[0] > b[0] and not overlap(c, b)
    cn, bn = nll[challenger], nll[baseline]
    nll_ok = cn[0] <= bn[0] or overlap(cn, bn)
    call = "WIN" if lower and nll_ok else "LOSS" if higher else "no clear difference"
    if lower and not nll_ok:
        call = "no win (lower RKL, but a worse reference_nll)"
    if lower and challenger in vetoed:
        call = "no win (lower RKL, but degenerate replies)"
    return (
        f"{CELLS[challenger]} vs {CELLS[baseline]}: {call} (RKL {c[0]:.4f} ± {c[1]:.4f} vs "
        f"{b[0]:.4f} ± {b[1]:.4f}; reference_nll {cn[0]:.4f} ± {cn[1]:.4f} vs "
        f"{bn[0]:.4f} ± {bn[1]:.4f}; n = {c[2]}, {b[2]} seeds)"
    )


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return f"{value[0]:{spec}} ± {value[1]:{spec}}"
    return format(value, spec)


def table(runs: list[dict], teacher: dict[str, float]) -> str:
    """The Markdown: main table, per-family accuracy, verdicts."""
    keys = [k for k, _, _ in COLUMNS]
    families = sorted({k for r in runs for k in r["results"]["evaluations"]["final"]
                       if k.startswith("answer_accuracy/")})  # fmt: skip
    stats = {k: cell_stats(runs, k) for k in [*keys, *families]}
    start = runs[0]["results"]["evaluations"].get("start", {}) if runs else {}
    rows = [("teacher", {k: teacher.get(k) for k in [*keys, *families]}, "")]
    rows.append(("pruned student, before", {k: start.get(k) for k in [*keys, *families]}, ""))
    for cell, label in CELLS.items():
        n = stats["rkl_to_teacher"].get(cell, (0, 0, 0))[2]
        rows.append((label, {k: stats[k].get(cell) for k in [*keys, *families]}, str(n)))
    lines = ["| model | n | " + " | ".join(c for _, c, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * (len(COLUMNS) + 2))
    for label, vals, n in rows:
        lines.append(
            f"| {label} | {n} | " + " | ".join(_fmt(vals[k], f) for k, _, f in COLUMNS) + " |"
        )
    if families:
        lines += ["", "Answer accuracy per checkable family (final, mean ± std over seeds):", ""]
        lines.append("| model | " + " | ".join(f.split("/", 1)[1] for f in families) + " |")
        lines.append("|" + "---|" * (len(families) + 1))
        for label, vals, _ in rows:
            lines.append(
                f"| {label} | " + " | ".join(_fmt(vals[f], ".3f") for f in families) + " |"
            )
    vetoed = frozenset(r["axes"].get("method") for r in runs if degenerate(r))
    lines += ["", *(f"- {verdict(stats, cell, vetoed=vetoed)}" for cell in ("gkd", "mixed"))]
    if vetoed:
        lines.append(f"- degenerate final replies in some seed of: {', '.join(sorted(vetoed))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--data", default=os.environ.get("GKD_REAL_HEAL_DATA", "~/real_heal_data"))
    ap.add_argument("--out", default="", help="also write the Markdown here")
    ap.add_argument("--n_eval", type=int, default=112, help="held-out prompts evaluated")
    args = ap.parse_args(argv)
    runs, missing = load_runs(os.path.expanduser(args.root), r"^real_heal_")
    text = table(runs, teacher_scores(os.path.expanduser(args.data), args.n_eval))
    if missing:
        text += f"\n\nNot finished yet: {', '.join(missing)}"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
