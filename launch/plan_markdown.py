"""The memory table of docs/results/plans.md from launch/plan_table.sh's output: one Markdown row
per plan.

    python launch/plan_markdown.py plans.jsonl        # reads plans.jsonl and plans.jsonl.done

Every figure is per device and comes from the TPU compiler's memory analysis (planning/planner.py's
JSON line); a plan that did not fit at its batch is listed from the .done file, since the
compiler stops at the first buffer that does not fit and reports no peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

GIB = 1 << 30
HEADER = (
    "| student ← teacher | slice (chips) | variant | batch | fits | peak / HBM GiB | student "
    "params | optimizer | teacher | update temp. | sampler temp. | model TFLOP/step/chip |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def variant(row: dict[str, Any]) -> str:
    """The memory fields a plan ran with, in plan_table.sh's words."""
    d = row["dtypes"]
    parts = []
    if d.get("lora", "0") not in ("0", ""):
        parts.append(f"lora{d['lora']}")
    if d["student"] == "bfloat16":
        parts.append("bf16 student")
    if d["remat"] != "none":
        parts.append(f"remat {d['remat']}" if d["remat"] != "full" else "remat")
    if d["teacher"] == "bfloat16":
        parts.append("bf16 teacher")
    label = " + ".join(parts) or "defaults"
    flags = row.get("libtpu_init_args")  # the compiler's flags, e.g. its scheduler's reruns
    return f"{label} (`LIBTPU_INIT_ARGS={flags}`)" if flags else label


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def row_line(row: dict[str, Any]) -> str:
    p, progs = row["parts"], row["programs"]
    chips = math.prod(row["mesh"].values())
    flops = row.get("model_flops")  # rows from before 2026-12-02 lack it
    tflop = f"{sum(flops.values()) / 1e12:.1f}" if flops else "?"
    sampler = progs.get("sampler", {})
    sampler_temp = gib(sampler.get("temporaries", 0))
    # the scheduler's HBM share the sampler was compiled with (gkd_jax/decoding/sampler_memory.py;
    # rows
    # from before that cap, 2026-12-02, were compiled with the whole chip)
    cap = row.get("compiler_options", {}).get("sampler", {})
    if cap:
        percent = next(iter(cap.values()))
        auto = row.get("train_percent")  # the trainer's automatic cap, where the planner
        lowered = ""  # had to lower it to fit: the run must set the planner's
        if auto is not None and str(auto) != percent:
            lowered = f", lowered from {auto} %: set it"
        sampler_temp += f" (cap {percent} %{lowered})"
    batch = str(row["batch"])
    if "largest_batch" in row:  # a --batch=bisect plan: the largest batch's figures
        over = row["smallest_not_fitting"]
        batch = f"**{batch}** largest" + (f" ({over} does not fit)" if over else " tried")
    return (
        f"| {row['student']} ← {row['teacher']} | {row['topology']} ({chips}) | {variant(row)} "
        f"| {batch} | {'yes' if row['fits'] else 'no'} | {gib(row['peak'])} / "
        f"{gib(row['hbm'])} | {gib(p['params'])} | {gib(p['opt_state'])} | {gib(p['teacher'])} "
        f"| {gib(progs['update']['temporaries'])} | {sampler_temp} "
        f"| {tflop} |"
    )


def does_not_fit_line(key: str, why: str = "") -> str:
    """A .done line `student teacher slice batch label does-not-fit` as a table row; `why`: the
    compiler's message from the .oom file ("the total memory required for HLO temporaries
    (19.93G) exceeds available HBM (15.75G)."), if any."""
    student, teacher, topo, batch, label = key.split()[:5]
    label = label.replace("+", " + ").replace("bf16-", "bf16 ")
    why = f" ({why.rstrip('.')})" if why else ""
    return (
        f"| {student} ← {teacher} | {topo} | {label} | {batch} | **no**: out of memory at "
        f"compile time{why} | | | | | | | |"
    )


def _reasons(path: str) -> dict[str, str]:
    """plan_table.sh's .oom file: `student teacher slice batch label<TAB>message` lines."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        pairs = (line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
        return {k: v for k, v in pairs}


# plan_table.sh's order: pairs, slices, variants (anything else after, by name)
PAIRS = [
    "qwen2.5-1.5b",
    "llama-3.1-8b",
    "llama-3.2-1b",
    "gemma-2-2b",
    "gemma-3-1b",
    "flan-t5-large",
]
SLICES = ["v5e-8", "v5p-8", "v6e-8", "v5e-16"]


def _rank(items: list[str], x: str) -> tuple[int, str]:
    return (items.index(x), "") if x in items else (len(items), x)


def _order(student: str, topology: str, label: str) -> tuple:
    """Rows of one pair together, by slice, then as plan_table.sh runs the variants: the
    defaults, remat + bf16 teacher, bf16 student on top, LoRA."""
    kind = 3 if "lora" in label else 2 if "student" in label else 1 if "remat" in label else 0
    return (_rank(PAIRS, str(student)), _rank(SLICES, topology), kind)


def table(jsonl: str) -> str:
    entries = []  # (order, line); sorted stably, so repeated cells keep their file order
    with open(jsonl) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        entries.append((_order(row["student"], row["topology"], variant(row)), row_line(row)))
    done, why = jsonl + ".done", _reasons(jsonl + ".oom")
    if os.path.exists(done):
        with open(done) as f:
            keys = [k.removesuffix(" does-not-fit") for k in f.read().splitlines()]
        for k in keys:
            if not k.endswith((" ok", " over-hbm")):  # those have JSON lines
                student, _, topology, _, label = k.split()[:5]
                line = does_not_fit_line(k, why.get(k, ""))
                entries.append((_order(student, topology, label), line))
    entries.sort(key=lambda e: e[0])
    return "\n".join([HEADER] + [line for _, line in entries])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl")
    print(table(ap.parse_args().jsonl))


if __name__ == "__main__":
    main()
