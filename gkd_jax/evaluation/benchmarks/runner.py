"""`python -m gkd_jax.evaluate --benchmark=mmlu|bbh`: score a checkpoint on a held-out benchmark.

    python -m gkd_jax.evaluate --benchmark=mmlu --checkpoint=WORKDIR --data_dir=~/data/mmlu \\
        [--shots=5] [--num_examples=N] [--batch_size=16] [--dtype=bfloat16] [--out=DIR]
    python -m gkd_jax.evaluate --benchmark=bbh --checkpoint=google/flan-t5-xl \\
        --data_dir=~/data/BIG-Bench-Hard [--shots=3] [--bbh_prompt=cot|direct]

evaluation/checkpoints.py finds and loads the checkpoint as for a task's evaluation (our model
dir, a workdir, a Hugging Face directory or hub id) and its tokenizer, then calls `run` here;
--config is not needed (when given, only its `tokenizer` is read). --num_examples caps the
examples per subject / task, for a quick look. Writes OUT/predictions.jsonl (one row per question),
OUT/metrics.json (averages, per-subject / per-task accuracies) and prints a table; OUT defaults
to WORKDIR/eval_BENCHMARK (or ./eval_BENCHMARK).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from gkd_jax.evaluation.benchmarks import bbh, mmlu
from gkd_jax.evaluation.benchmarks.likelihood import Scorer
from gkd_jax.models import COMPUTE_DTYPES
from gkd_jax.models.lm import LMFunctions
from gkd_jax.parallel import distributed
from gkd_jax.parallel.distributed import log

BENCHMARKS = ("mmlu", "bbh")
DEFAULT_SHOTS = {"mmlu": 5, "bbh": 3}  # MMLU's and BBH's standard settings
MAX_PROMPT_LEN = 2048  # longer prompts keep their last tokens (counted in metrics.json)


def define_flags() -> None:
    """The flags `gkd_jax.evaluate` adds for --benchmark (called from its define_flags)."""
    flags.DEFINE_enum(
        "benchmark",
        None,
        list(BENCHMARKS),
        "Score --checkpoint on a held-out benchmark (data from --data_dir) instead of "
        "config.task; --config is then optional.",
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "--benchmark's local data: MMLU's data/ (dev/, test/ CSVs) or a "
        "cais/mmlu copy; BIG-Bench-Hard's release (bbh/, cot-prompts/).",
    )
    flags.DEFINE_integer("shots", None, "Exemplars per prompt (default: mmlu 5, bbh 3).")
    flags.DEFINE_enum("bbh_prompt", "cot", list(bbh.PROMPTS), "BBH: chain of thought or answer.")
    flags.DEFINE_integer("batch_size", 16, "--benchmark: prompts per forward / decode batch.")
    flags.DEFINE_enum("dtype", "float32", list(COMPUTE_DTYPES), "--benchmark: compute dtype.")


def options_from_flags(f) -> dict[str, Any]:
    """run()'s keywords from the CLI's flags (absl's FLAGS)."""
    return dict(
        data_dir=f.data_dir,
        shots=f.shots,
        num_examples=f.num_examples,
        bbh_prompt=f.bbh_prompt,
        batch_size=f.batch_size,
    )


def check(name: str, data_dir: str | None, num_examples: int | None) -> None:
    """What a user can get wrong, before any model is loaded."""
    if name not in BENCHMARKS:
        raise ValueError(f"--benchmark={name!r}: choose one of {list(BENCHMARKS)}")
    if not data_dir:
        raise ValueError(f"--benchmark={name} needs --data_dir (its data are never downloaded)")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"--num_examples={num_examples} must be >= 1")


def run(
    name: str,
    params: Any,
    fns: LMFunctions,
    tokenizer,
    stop_ids: Sequence[int],
    *,
    data_dir: str | None,
    out: str,
    checkpoint: str = "",
    shots: int | None = None,
    num_examples: int | None = None,
    bbh_prompt: str = "cot",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score a loaded model on benchmark `name`; write OUT/predictions.jsonl and
    OUT/metrics.json, print the table; return the metrics.json content. (checkpoints.py's
    `benchmark_checkpoint` finds and loads the model of a --checkpoint first.)"""
    check(name, data_dir, num_examples)
    shots = DEFAULT_SHOTS[name] if shots is None else shots
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    start = time.time()
    if name == "mmlu":
        scorer = Scorer(
            params,
            fns,
            pad_id=tokenizer.pad_token_id,
            batch_size=batch_size,
            max_prompt_len=MAX_PROMPT_LEN,
            log=log,
        )
        summary, rows = mmlu.evaluate(
            scorer, tokenizer, data_dir, shots=shots, limit=num_examples, log=log
        )
    else:
        summary, rows = bbh.evaluate(
            params,
            fns,
            tokenizer,
            data_dir,
            stop_ids=stop_ids,
            shots=shots,
            prompt=bbh_prompt,
            limit=num_examples,
            batch_size=batch_size,
            max_prompt_len=MAX_PROMPT_LEN,
            log=log,
        )
    summary = {"checkpoint": checkpoint, "data_dir": data_dir, **summary}
    summary["seconds"] = time.time() - start
    if distributed.is_main_process():
        os.makedirs(out, exist_ok=True)
        write_outputs(out, rows, summary)
    log(table(summary))
    log(f"[{name}] -> {out}/predictions.jsonl, {out}/metrics.json")
    return summary


def write_outputs(out: str, rows: list[dict], summary: dict[str, Any]) -> None:
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)


def table(summary: dict[str, Any]) -> str:
    """The averages, then one line per subject / task."""
    parts = summary.get("per_subject") or summary.get("per_task") or {}
    counts = summary.get("examples_per_subject") or summary.get("examples_per_task") or {}
    lines = [
        f"| {summary['benchmark']} ({summary['shots']}-shot) | value | examples |",
        "|---|---|---|",
    ]
    for metric, value in summary["metrics"].items():
        lines.append(f"| {metric} | {value:.4f} | {summary['examples']} |")
    for part, value in parts.items():
        lines.append(f"| {part} | {value:.4f} | {counts.get(part, '')} |")
    return "\n".join(lines)
