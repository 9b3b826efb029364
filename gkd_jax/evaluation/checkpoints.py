"""Evaluate a checkpoint on a task split (`python -m gkd_jax.evaluate`'s work): find and load the
model, decode the split as config.eval says, score it, write predictions and metrics, print a table.

What --checkpoint accepts, what the config decides and what is written: gkd_jax/evaluate.py's
docstring (the command's help). `evaluate_checkpoint` is that command's whole work; the
evaluation itself is evaluator.py's Evaluator.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from gkd_jax.config.checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.resources import is_hf_source, resolve_model_dir, resolve_path
from gkd_jax.data.task_types import Split
from gkd_jax.data.tasks import get_task
from gkd_jax.evaluation.evaluator import (
    Evaluator,
    check_token_ids,
    describe_decoding,
    make_divergence_fn,
    make_divergence_to_teacher,
    make_eval_decoder,
    make_reference_nll,
    teacher_forced,
)
from gkd_jax.evaluation.reply_stats import sample_lines
from gkd_jax.models import COMPUTE_DTYPES, functional_lm
from gkd_jax.models.hf import load_pretrained
from gkd_jax.models.sources import char_tokenizer, hf_tokenizer
from gkd_jax.parallel import distributed, sharding
from gkd_jax.parallel.distributed import log
from gkd_jax.training import checkpoint

SPLITS = ("eval", "train")
MODEL_DIRS = ("model", "best_model")  # where a workdir keeps our checkpoints


def locate_checkpoint(spec: str) -> tuple[str, str, str | None]:
    """(kind "ours" | "hf", model path or hub id, the workdir it belongs to or None)."""
    if not spec:
        raise ValueError("--checkpoint is empty: pass a model dir, a workdir or a HF directory")
    if is_hf_source(spec):
        path = resolve_model_dir(spec)
        parent = os.path.dirname(path)
        return "hf", path, parent if os.path.basename(path) == "hf_model" else None
    path = resolve_path(spec)
    if checkpoint.has_model(path):
        parent = os.path.dirname(path)
        return "ours", path, parent if os.path.basename(path) in MODEL_DIRS else None
    if checkpoint.has_model(os.path.join(path, "model")):
        return "ours", os.path.join(path, "model"), path
    what = "exists but holds" if os.path.isdir(path) else "does not exist:"
    raise FileNotFoundError(
        f"--checkpoint={spec}: {path} {what} no model. Pass our model directory "
        f"({checkpoint.CONFIG_FILE} + params/, e.g. WORKDIR/model or WORKDIR/best_model), a "
        "training workdir (its model/ is used), or a Hugging Face directory with config.json."
    )


def load_model(kind: str, path: str, spec: str, dtype):
    try:
        if kind == "hf":
            return load_pretrained(path, dtype=dtype)
        return checkpoint.load_model(path, dtype=dtype)
    except (ValueError, KeyError) as e:  # unknown family, missing tensors, bad shapes
        raise ValueError(f"--checkpoint={spec}: cannot load the model at {path}: {e}") from e


def tokenizer_for(config, kind: str, path: str, workdir: str | None, out: str):
    """(tokenizer, stop ids): config.tokenizer; else the HF checkpoint's own; else the char
    tokenizer of the checkpoint's workdir; else the task's character tokenizer, built in OUT."""
    if config.tokenizer:
        return hf_tokenizer(config.tokenizer, *([path] if kind == "hf" else []))
    if kind == "hf" and os.path.exists(os.path.join(path, "tokenizer_config.json")):
        return hf_tokenizer(path)
    saved = os.path.join(workdir or "", "tokenizer")
    if workdir and os.path.exists(os.path.join(saved, "tokenizer.json")):
        return char_tokenizer(saved)
    return char_tokenizer(os.path.join(out, "tokenizer"))


def load_teacher(config, workdir: str | None, task, dtype):
    """The teacher a metric-less task is scored against: config.teacher.checkpoint, else the
    one training kept in WORKDIR/teacher/model."""
    source = config.teacher.checkpoint
    if source:
        if is_hf_source(source):
            return load_pretrained(source, dtype=dtype)
        return checkpoint.load_model(resolve_path(source), dtype=dtype)
    path = os.path.join(workdir or "", "teacher", "model")
    if workdir and checkpoint.has_model(path):
        return checkpoint.load_model(path, dtype=dtype)
    raise FileNotFoundError(
        f"{what_needs_the_teacher(config, task)}: the model's divergence from the teacher on "
        "its own completions, and there is no teacher: set --config.teacher."
        "checkpoint= (our model dir or a Hugging Face directory), or pass a workdir that holds "
        "teacher/model"
    )


def what_needs_the_teacher(config, task) -> str:
    if task.metric is None:
        return f"task {task.name!r} is scored by {task.metric_name}"
    return f"--config.eval.divergence_to_teacher={config.eval.divergence_to_teacher} asks for"


def teacher_scoring(config, workdir: str | None, task, dtype, fns) -> tuple[dict[str, Any], int]:
    """(Evaluator keywords, shared vocabulary): for a task without a metric, scored by the
    model's divergence from the teacher on its own completions, the teacher's parameters and
    that divergence; with config.eval.divergence_to_teacher, that measure too; else ({}, the
    model's vocabulary)."""
    to_teacher = config.eval.divergence_to_teacher
    if task.metric is not None and not to_teacher:
        return {}, fns.vocab_size
    teacher_params, teacher_fns = functional_lm(load_teacher(config, workdir, task, dtype))
    scoring = dict(teacher_params=teacher_params)
    if task.metric is None:
        scoring["divergence"] = make_divergence_fn(config, fns, teacher_fns)
    if to_teacher:
        scoring["to_teacher"] = make_divergence_to_teacher(config, fns, teacher_fns)
    return scoring, min(fns.vocab_size, teacher_fns.vocab_size)


def default_out(workdir: str | None, split: str) -> str:
    return os.path.join(workdir or os.getcwd(), f"eval_{split}")


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    spec: str,
    *,
    split: str = "eval",
    out: str | None = None,
    num_examples: int | None = None,
) -> dict[str, Any]:
    """Decode `split` of config.task with the model at `spec` (config.eval.decoding) and score
    it: the task's metric (and extra metrics), or for a task without one (chat) the divergence
    from config.teacher on the completions. Write OUT/predictions.jsonl and OUT/metrics.json;
    return the metrics.json content."""
    if split not in SPLITS:
        raise ValueError(f"--split={split!r}: choose one of {list(SPLITS)}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"--num_examples={num_examples} must be >= 1")
    kind, path, workdir = locate_checkpoint(spec)
    out = os.path.abspath(out or default_out(workdir, split))
    os.makedirs(out, exist_ok=True)
    config = config_for_split(config, split, num_examples)
    task = get_task(config.task)
    tokenizer, stops = tokenizer_for(config, kind, path, workdir, out)
    validate_config(config, vocab_size=len(tokenizer))
    dtype = COMPUTE_DTYPES[config.dtype]
    model = load_model(kind, path, spec, dtype)
    params, fns = functional_lm(model)
    log(f"[evaluate] {type(model).__name__} from {path} ({fns.vocab_size} logits)")
    scoring, vocab = teacher_scoring(config, workdir, task, dtype, fns)

    chosen, data = load_split(config, task, tokenizer, stops, split, num_examples)
    n = num_examples if num_examples is not None else len(chosen.prompts)
    try:
        check_token_ids(data, vocab, split)
    except ValueError as e:
        raise ValueError(
            f"--checkpoint={spec}: the model(s) have {vocab} logits, the tokenizer "
            f"{len(tokenizer)} tokens: {e}. Is this the model the config's tokenizer was made "
            "for (config.tokenizer)?"
        ) from e

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    params = sharding.put(params, mesh)
    if scoring:
        scoring["teacher_params"] = sharding.put(scoring["teacher_params"], mesh)
    if teacher_forced(config, task):  # the references scored too (eval.teacher_forced)
        scoring["reference_nll"] = make_reference_nll(config, fns)
    decoder = make_eval_decoder(
        fns.decoding, config, stop_ids=stops, pad_id=tokenizer.pad_token_id, vocab_size=vocab
    )
    evaluator = Evaluator(
        config, task, tokenizer, chosen, data, mesh, decoders={"model": decoder},
        seed=config.seed, stop_ids=stops, **scoring,
    )  # fmt: skip
    decoding = describe_decoding(config)
    log(f"[evaluate] {n} {config.task} {split} examples, decoding: {decoding}")
    start = time.time()

    def progress(done: int, total: int) -> None:
        log(f"[evaluate] {done}/{total} decoded ({time.time() - start:.1f}s)")

    texts, tokens, mask = evaluator.decode(params, "model", progress=progress)
    scores = evaluator.scores(params, texts, tokens, mask, "model")
    seconds = time.time() - start
    summary = {
        "checkpoint": path,
        "task": config.task,
        "split": split,
        "examples": n,
        "decoding": decoding,
        "seconds": seconds,
        "metrics": scores,
        "reference_replies": evaluator.reference_stats.scores(),  # reply_stats of the data's
    }
    if distributed.is_main_process():
        write_outputs(out, chosen, texts, summary)
    log(markdown_table(summary))
    samples = sample_lines(list(zip(chosen.prompts[:3], texts[:3], strict=True)))
    log("\n".join(["Sample replies, prompt -> reply:", *samples]))
    log(f"[evaluate] -> {out}/predictions.jsonl, {out}/metrics.json")
    return summary


def benchmark_checkpoint(
    name: str, spec: str, *, out: str | None = None, dtype: str = "float32",
    tokenizer: str = "", **options,
) -> dict[str, Any]:  # fmt: skip
    """--benchmark: the model at `spec` (and its tokenizer, or `tokenizer`) scored on MMLU or
    BBH by gkd_jax/evaluation/benchmarks/runner.py (`options`: its `run` keywords)."""
    from gkd_jax.evaluation.benchmarks import runner  # only --benchmark needs it

    runner.check(name, options.get("data_dir"), options.get("num_examples"))
    kind, path, workdir = locate_checkpoint(spec)
    out = os.path.abspath(out or default_out(workdir, name))
    os.makedirs(out, exist_ok=True)
    stub = ml_collections.ConfigDict({"tokenizer": tokenizer})
    tok, stops = tokenizer_for(stub, kind, path, workdir, out)
    model = load_model(kind, path, spec, COMPUTE_DTYPES[dtype])
    log(f"[{name}] {type(model).__name__} from {path}")
    params, fns = functional_lm(model)
    return runner.run(name, params, fns, tok, stops, out=out, checkpoint=path, **options)


def config_for_split(config, split: str, num_examples: int | None):
    """A copy of `config` (the caller's stays as it is) that loads no more data than needed."""
    config = config.copy_and_resolve_references()
    if split == "eval":
        # Tasks load both splits; data.train_examples caps the training one (arith generates,
        # paper tasks tokenize that many), which evaluating the eval split does not need.
        config.data.train_examples = 1
        if num_examples is not None:
            config.eval.num_examples = num_examples  # the task loads (or generates) that many
    return config


def load_split(config, task, tokenizer, stops, split: str, num_examples: int | None):
    """(Split, packed data) of the first `num_examples` (all: None) examples of `split`."""
    train_split, eval_split = task.load(config, tokenizer, stops, log=log)
    d = eval_split if split == "eval" else train_split
    n = len(d.prompt_ids) if num_examples is None else num_examples
    chosen = Split(
        d.prompt_ids[:n], d.completion_ids[:n], d.references[:n], d.prompts[:n],
        answers=d.answers and d.answers[:n], families=d.families and d.families[:n],
    )  # fmt: skip
    return chosen, pipeline.pack_split(chosen, config, tokenizer.pad_token_id)


def write_outputs(out: str, split: Split, texts: list[str], summary: dict[str, Any]) -> None:
    """OUT/predictions.jsonl (one {"prompt", "prediction", "reference"} per example) and
    OUT/metrics.json (`summary`)."""
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:
        for p, t, r in zip(split.prompts, texts, split.references, strict=True):
            row = {"prompt": p, "prediction": t, "reference": r}
            f.write(json.dumps(row, default=str) + "\n")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| metric | value | examples | decoding | seconds |", "|---|---|---|---|---|"]
    rows = summary["metrics"] or {"(none)": float("nan")}
    for name, value in rows.items():
        lines.append(
            f"| {name} | {value:.4f} | {summary['examples']} | {summary['decoding']} | "
            f"{summary['seconds']:.1f} |"
        )
    return "\n".join(lines)
