"""Evaluation, as the trainer runs it and `python -m gkd_jax.evaluate` does: decode a split's
prompts the way config.eval.decoding says, then score the completions.

  make_eval_decoder  the decoder config.eval.decoding names (greedy / beam / sample)
  decode_split       every row of a packed split through it, batch i sampling with eval_key(i)
  task_scores        the task's metric (and extra metrics) of the decoded texts
  mean_divergence    for a task without a metric (chat): the student's divergence from the
                     teacher on its own completions (make_divergence_fn); with
                     config.eval.divergence_to_teacher, an exact one beside the metric
  make_reference_nll with config.eval.teacher_forced: the student's NLL of the references
  (chat records carrying "answer": answer_accuracy, metrics.answer_scores, beside the rest)
  Evaluator          all of the above for one split, built once: `evaluator(params)`, with
                     the replies' statistics (reply_stats.py) and a warning when they collapse
and what the trainer keeps and reports of the scores: keep_if_best (WORKDIR/best_model),
eval_scalars (TensorBoard tags), results_table; check_token_ids guards the packed data.

A divergence measured on the student's own replies can be gamed by degenerate replies (48
newlines are easy for a teacher to predict; issue 24), so beside it every evaluation reports
what the replies look like (reply_stats.NAMES: length, stop rate, distinct-1/2, repetition)
and, with eval.teacher_forced, scores the dataset's reference replies teacher-forced: the same
divergences on them ("teacher_forced_..."), and the student's NLL of them ("reference_nll",
nats per token; "reference_nll_per_reply", nats per reply), which no choice of its own replies
can improve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.data import pipeline
from gkd_jax.data.task_types import Split, Task
from gkd_jax.decoding.beam_search import BeamSearchConfig, make_beam_search
from gkd_jax.decoding.sampling import Decoding, SamplingConfig, make_sampler
from gkd_jax.evaluation import metrics, reply_stats
from gkd_jax.models import LMFunctions, with_params
from gkd_jax.parallel import distributed, sharding
from gkd_jax.parallel.distributed import log
from gkd_jax.training import checkpoint
from gkd_jax.training.step import Objective

DECODINGS = ("greedy", "beam", "sample")
# config.eval.early_stopping -> BeamSearchConfig.early_stopping (transformers' values)
EARLY_STOPPING = {"never": "never", "heuristic": False, "k_finished": True}
# config.eval.divergence_to_teacher: "" (off) or an exact divergence (losses.DIVERGENCES)
EVAL_DIVERGENCES = ("", "rkl", "fkl", "jsd")
# config.eval.teacher_forced: score the reference replies teacher-forced ("auto": where the task
# has no metric of its own, its only score being a divergence on the student's own replies)
TEACHER_FORCED = ("auto", "on", "off")
TEACHER_FORCED_PREFIX = "teacher_forced_"  # + the on-policy divergence's name
NLL_KEYS = ("reference_nll", "reference_nll_per_reply")

# Evaluation's sampling keys (seed, batch), apart from training's (seed, step): batch i of an
# evaluation would otherwise draw the noise that step i's on-policy samples drew.
EVAL_STREAM = 0x6576616C


def eval_key(base_key: jax.Array, batch: int) -> jax.Array:
    """The sampling key of evaluation batch `batch` (sampled evaluation); base_key = key(seed)."""
    return jax.random.fold_in(jax.random.fold_in(base_key, EVAL_STREAM), batch)


def make_eval_decoder(
    decoding: Decoding, config, *, stop_ids: Sequence[int], pad_id: int, vocab_size: int,
    compiler_options=None,
) -> Callable:  # fmt: skip
    """Jitted `decode(params, prompt [B, P], prompt_mask [B, P], rng) -> tokens/mask [B, N]`
    as config.eval.decoding says, `config.max_new_tokens` long, over the first `vocab_size`
    ids. The rng matters to "sample" only. `compiler_options`: jax.jit's (sampler_memory)."""
    e = config.eval
    common = dict(stop_ids=tuple(stop_ids), pad_id=pad_id, vocab_size=vocab_size)
    if e.decoding == "beam":
        cfg = BeamSearchConfig(
            max_new_tokens=config.max_new_tokens,
            beam_size=e.beam_size,
            length_penalty=e.length_penalty,
            length_penalty_form=e.length_penalty_form,
            early_stopping=EARLY_STOPPING[e.early_stopping],
            **common,
        )
        return make_beam_search(decoding, cfg, compiler_options=compiler_options)
    temperature = 0.0 if e.decoding == "greedy" else e.temperature
    sampling = SamplingConfig(config.max_new_tokens, temperature, **common)
    return make_sampler(decoding, sampling, compiler_options=compiler_options)


def describe_decoding(config) -> str:
    """One line for logs and tables: 'greedy', 'beam 4 (t5x, alpha 0.6)', 'sample (T=1.0)'."""
    e = config.eval
    if e.decoding == "beam":
        stop = "" if e.early_stopping == "never" else f", {e.early_stopping}"
        return f"beam {e.beam_size} ({e.length_penalty_form}, alpha {e.length_penalty}{stop})"
    if e.decoding == "sample":
        return f"sample (T={e.temperature})"
    return e.decoding


def task_scores(task, texts: list[str], references: list) -> dict[str, float]:
    """{task.metric_name: task.metric(...)} plus the task's extra metrics (ROUGE-1/2/L beside
    ROUGE-2, ...). A task without a metric (scored against a teacher) gives {}."""
    if task.metric is None:
        return {}
    scores = {task.metric_name: float(task.metric(texts, references))}
    if task.extra_metrics is not None:
        scores |= {k: float(v) for k, v in task.extra_metrics(texts, references).items()}
    return scores


def check_token_ids(data: dict[str, np.ndarray], vocab: int, name: str) -> None:
    """Every token id must index the (shared) vocabulary: an id past a model's embedding table
    would be silently clamped by the gather, not rejected."""
    for key in ("prompt", "completion"):
        rows = np.nonzero((data[key] >= vocab).any(axis=1))[0]
        if len(rows):
            raise ValueError(
                f"{len(rows)} {name} examples hold token ids >= {vocab} (the models' shared "
                f"vocabulary) in their {key}, first #{rows[0]}: the tokenizer has tokens the "
                "models have no embedding for"
            )


def decode_split(
    sampler, params, data, batch_size, mesh, *, seed: int = 0, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Completions of every row by `sampler` (make_eval_decoder: greedy, beam or sampled with
    key eval_key(key(seed), batch)): tokens [N, T] and mask [N, T] (numpy).
    `progress(done, total)` is called after each batch."""
    rows = sharding.batch_sharding(mesh)  # params stay as placed: no gather per evaluation
    mine = distributed.host_rows(batch_size, rows)  # every host holds the eval data
    tokens, masks = [], []
    total = len(data["prompt"])
    for i, batch in enumerate(pipeline.in_order(data, batch_size)):
        out = sampler(
            params,
            distributed.global_batch(batch["prompt"][mine], rows, batch_size),
            distributed.global_batch(batch["prompt_mask"][mine], rows, batch_size),
            eval_key(jax.random.key(seed), i),
        )
        if progress is not None:
            progress(min((i + 1) * batch_size, total), total)
        out_tokens, out_mask = distributed.to_host((out.tokens, out.mask))  # [B, T] each
        tokens.append(out_tokens[batch["valid"]])
        masks.append(out_mask[batch["valid"]])
    return np.concatenate(tokens), np.concatenate(masks)


def make_divergence_fn(config, student: LMFunctions, teacher: LMFunctions):
    """Jitted per-sequence mean of the training loss (config.gkd's divergence) of given
    completions: (params, teacher_params, prompt, prompt_mask, completion, completion_mask)
    -> [B]."""
    objective = Objective(config, student, teacher)

    @jax.jit
    def divergence(params, teacher_params, prompt, prompt_mask, completion, completion_mask):
        batch = dict(
            prompt=prompt,
            prompt_mask=prompt_mask,
            completion=completion,
            completion_mask=completion_mask,
        )
        per_token = objective.token_losses(params, teacher_params, batch)
        m = completion_mask.astype(jnp.float32)
        return jnp.sum(per_token * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

    return divergence


def make_divergence_to_teacher(config, student: LMFunctions, teacher: LMFunctions):
    """make_divergence_fn of config.eval.divergence_to_teacher, exact whatever the training
    loss is: the full distributions at temperature 1 (no top-K, no cache, no lean form), so
    that runs trained by different divergences are measured by one ruler."""
    measure = config.copy_and_resolve_references()
    g = measure.gkd
    g.divergence = config.eval.divergence_to_teacher
    g.loss_impl, g.teacher_top_k, g.teacher_cache = "full", 0, ""
    g.teacher_temperature = g.loss_temperature = 1.0
    measure.objective = "gkd"
    return make_divergence_fn(measure, student, teacher)


def teacher_forced(config, task: Task) -> bool:
    """Whether evaluation scores the reference replies teacher-forced (eval.teacher_forced)."""
    mode = config.eval.teacher_forced
    return mode == "on" or (mode == "auto" and task.metric is None)


def make_reference_nll(config, student: LMFunctions) -> Callable:
    """Jitted (params, teacher_params, prompt, prompt_mask, completion, completion_mask) ->
    (sum [B], count [B]): the student's negative log-likelihood (nats) of given completions,
    teacher-forced, summed over each row's completion tokens (its stop token included): the
    SFT objective's per-token cross-entropy, at temperature 1, without dropout.
    `teacher_params` is unused: the signature is make_divergence_fn's, for `per_row`."""
    measure = config.copy_and_resolve_references()
    measure.objective, measure.dropout_rate = "sft", 0.0
    objective = Objective(measure, student, None)

    @jax.jit
    def nll(params, teacher_params, prompt, prompt_mask, completion, completion_mask):
        del teacher_params
        batch = dict(
            prompt=prompt,
            prompt_mask=prompt_mask,
            completion=completion,
            completion_mask=completion_mask,
        )
        per_token = objective.token_losses(params, None, batch)  # [B, N]
        m = completion_mask.astype(jnp.float32)
        return jnp.sum(per_token * m, axis=1), jnp.sum(m, axis=1)

    return nll


def per_row(fn, params, teacher_params, data, tokens, mask, batch_size, mesh) -> Any:
    """`fn`'s per-row results (make_divergence_fn's [B], or make_reference_nll's tuple of them)
    for completions tokens/mask [N, T] of the prompts in `data`, on the host: [N] each."""
    outs = []
    data = dict(data, completion=tokens, completion_mask=mask)
    rows = sharding.batch_sharding(mesh)
    mine = distributed.host_rows(batch_size, rows)
    for batch in pipeline.in_order(data, batch_size):
        put = {k: distributed.global_batch(batch[k][mine], rows, batch_size) for k in data}
        out = fn(
            params, teacher_params, put["prompt"], put["prompt_mask"], put["completion"],
            put["completion_mask"],
        )  # fmt: skip
        valid = batch["valid"]  # [B] the rows in_order did not pad
        outs.append(jax.tree.map(lambda x, v=valid: x[v], distributed.to_host(out)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def mean_divergence(
    divergence, params, teacher_params, data, tokens, mask, batch_size, mesh
) -> float:
    """Mean over rows of `divergence` (make_divergence_fn) on completions tokens/mask [N, T]
    of the prompts in `data`: the student's on-policy divergence from the teacher (or, on the
    references' tokens, the teacher-forced one)."""
    per_seq = per_row(divergence, params, teacher_params, data, tokens, mask, batch_size, mesh)
    return float(np.mean(per_seq))


class Evaluator:
    """One split, decoded and scored the same way at every evaluation of a run.

    `decoders`: make_eval_decoder's per model ("student", "teacher", ...), compiled once each;
    `data`: the split packed (pipeline.pack). A task without a metric is scored by
    `divergence` (make_divergence_fn) against `teacher_params`; `to_teacher`
    (make_divergence_to_teacher) adds "<eval.divergence_to_teacher>_to_teacher" to every
    student's scores. `reference_nll` (make_reference_nll, given where `teacher_forced`) adds
    the student's NLL of the references, and both divergences on them (TEACHER_FORCED_PREFIX).
    Every model's scores hold its replies' statistics (reply_stats.NAMES), and a warning is
    logged when they look collapsed next to the references' (`reference_stats`), read with
    `stop_ids` (default: the tokenizer's EOS). Sampled decoding draws batch i with
    eval_key(key(seed), i)."""

    def __init__(
        self,
        config,
        task: Task,
        tokenizer,
        split: Split,
        data: dict[str, np.ndarray],
        mesh,
        *,
        decoders: dict[str, Callable],
        teacher_params=None,
        divergence: Callable | None = None,
        to_teacher: Callable | None = None,
        reference_nll: Callable | None = None,
        stop_ids: Sequence[int] = (),
        seed: int = 0,
    ):
        self.config, self.task, self.tokenizer = config, task, tokenizer
        self.split, self.data, self.mesh = split, data, mesh
        self.decoders = dict(decoders)
        self.teacher_params, self.divergence, self.seed = teacher_params, divergence, seed
        self.to_teacher, self.reference_nll = to_teacher, reference_nll
        self.stop_ids = tuple(stop_ids) or (tokenizer.eos_token_id,)
        self.reference_stats = reply_stats.reply_stats(
            data["completion"], data["completion_mask"], self.stop_ids
        )  # the dataset's replies: what healthy ones look like here

    def __call__(self, params, who: str = "student") -> dict[str, Any]:
        """The scores of `who`'s completions, and "samples": the first three (prompt, text)."""
        texts, tokens, mask = self.decode(params, who)
        samples = [(p, t) for p, t in zip(self.split.prompts[:3], texts[:3], strict=True)]
        return {**self.scores(params, texts, tokens, mask, who), "samples": samples}

    def mean_divergence(self, divergence, params, tokens, mask) -> float:
        """mean_divergence of `params`' completions tokens/mask [N, T] of this split."""
        return mean_divergence(
            divergence, params, self.teacher_params, self.data, tokens, mask,
            self.config.eval.batch_size, self.mesh,
        )  # fmt: skip

    def decode(self, params, who: str = "student", progress=None):
        """(texts, tokens [N, T], mask [N, T]) of every prompt, decoded by decoders[who]."""
        tokens, mask = decode_split(
            self.decoders[who], params, self.data, self.config.eval.batch_size, self.mesh,
            seed=self.seed, progress=progress,
        )  # fmt: skip
        pairs = zip(tokens, mask, strict=True)
        texts = [self.tokenizer.decode(t[m], skip_special_tokens=True) for t, m in pairs]
        return texts, tokens, mask

    def scores(self, params, texts, tokens, mask, who: str = "student") -> dict[str, float]:
        """The task's metric (and extra metrics) of `texts`, or (no metric) the divergence of
        the model with `params` from the teacher on its completions tokens/mask; and with
        `to_teacher`, unless `who` is the teacher, that exact divergence too; the teacher-
        forced scores of the references (`reference_nll`); the replies' statistics."""
        scores = task_scores(self.task, texts, self.split.references)
        if self.split.answers is not None:  # chat records with checkable answers
            families = self.split.families or [None] * len(texts)
            scores |= metrics.answer_scores(texts, self.split.answers, families)
        if self.divergence is not None:
            scores[self.task.metric_name] = self.mean_divergence(
                self.divergence, params, tokens, mask
            )
        if self.to_teacher is not None and who != "teacher":
            key = divergence_key(self.config)
            scores[key] = self.mean_divergence(self.to_teacher, params, tokens, mask)
        if self.reference_nll is not None and who != "teacher":
            scores |= self.teacher_forced_scores(params)
        stats = reply_stats.reply_stats(tokens, mask, self.stop_ids)
        self.warn_if_collapsed(stats, who)
        return scores | stats.scores()

    def teacher_forced_scores(self, params) -> dict[str, float]:
        """The references scored teacher-forced: this evaluation's divergences on them (the
        same functions as on the model's own replies), and the model's NLL of them."""
        refs = self.data["completion"], self.data["completion_mask"]  # [N, T] each
        scores = {}
        if self.divergence is not None:
            name = self.task.metric_name.removeprefix("on_policy_")
            scores[TEACHER_FORCED_PREFIX + name] = self.mean_divergence(
                self.divergence, params, *refs
            )
        if self.to_teacher is not None:
            key = TEACHER_FORCED_PREFIX + divergence_key(self.config)
            scores[key] = self.mean_divergence(self.to_teacher, params, *refs)
        total, count = per_row(
            self.reference_nll, params, self.teacher_params, self.data, *refs,
            self.config.eval.batch_size, self.mesh,
        )  # fmt: skip
        # total, count [N]: the per-token mean pools tokens (a perplexity's log); per reply,
        # replies are weighted alike whatever their length.
        scores["reference_nll"] = float(total.sum() / count.sum())
        scores["reference_nll_per_reply"] = float(total.mean())
        return scores

    def warn_if_collapsed(self, stats: reply_stats.ReplyStats, who: str) -> None:
        """One log line naming the evidence when `who`'s replies look degenerate."""
        evidence = reply_stats.collapse_evidence(stats, self.reference_stats, self.token_text)
        if evidence:
            log(
                f"[eval] WARNING: the {who}'s replies look collapsed: {'; '.join(evidence)}. "
                "A score measured on a model's own replies (its divergence from the teacher) "
                "can improve while it degenerates: read the sample replies, and the scores of "
                "the references (config.eval.teacher_forced)."
            )

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token]) if token >= 0 else ""


def divergence_key(config) -> str:
    """The scores' key of config.eval.divergence_to_teacher, e.g. "rkl_to_teacher"."""
    return f"{config.eval.divergence_to_teacher}_to_teacher"


# ---------------------------------------------------------------------------- what is kept
def keep_if_best(student, params, step: int, score: float, task, workdir: str) -> None:
    """WORKDIR/best_model: the student at its best periodic evaluation so far (the train-state
    checkpoints rotate to the last few; this one survives them). Its score and step travel in
    its model_config.json, so a resumed run compares against it."""
    path = os.path.join(workdir, "best_model")
    if checkpoint.has_model(path):
        with open(os.path.join(path, checkpoint.CONFIG_FILE)) as f:
            best = json.load(f)["best"]
        sign = 1 if task.higher_is_better else -1
        if sign * score <= sign * best[task.metric_name]:
            return
    checkpoint.save_model(
        path, with_params(student, params), extra={"best": {"step": step, task.metric_name: score}}
    )
    log(f"[eval] best {task.metric_name} so far: {score:.4f} at step {step} -> {path}")


def eval_scalars(results: dict[str, dict], metric: str) -> dict[str, float]:
    """TensorBoard tags of evaluations by name: a student's scores as eval/NAME (its metric
    eval/METRIC first; "start" and "final" are written at step 0 and the last step), with its
    divergences, teacher-forced scores and reply statistics; the teacher's as eval/teacher_NAME."""
    tags = {}
    for name, r in results.items():
        prefix = "teacher_" if name == "teacher" else ""
        keys = [metric, *(k for k in r if k not in (metric, "samples"))]
        tags |= {f"eval/{prefix}{k}": r[k] for k in keys}
    return tags


def evaluation_details(results: dict[str, dict], evaluator: Evaluator) -> dict[str, Any]:
    """results.json's "evaluations" (every score of each evaluation, by name: teacher, start,
    final) and "reference_replies" (the references' reply_stats, what healthy replies do)."""
    return {
        "evaluations": {
            name: {k: v for k, v in r.items() if k != "samples"} for name, r in results.items()
        },
        "reference_replies": evaluator.reference_stats.scores(),
    }


def eval_line(result: dict[str, Any], metric: str) -> str:
    """A log line's scores: 'on_policy_jsd 0.3520 | teacher_forced_jsd 0.9100 | reference_nll
    2.3100 | replies 48.0 tokens, 0% stopped, distinct-2 0.002'."""
    tf = TEACHER_FORCED_PREFIX
    keys = [metric, *(k for k in result if k.endswith("_to_teacher") and not k.startswith(tf))]
    keys += [*(k for k in result if k.startswith(tf)), "reference_nll", "answer_accuracy"]
    line = " | ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)
    if "reply_tokens" in result:  # absent from evaluations stored by an older version
        line += (
            f" | replies {result['reply_tokens']:.1f} tokens, {result['reply_stopped']:.0%} "
            f"stopped, distinct-2 {result['distinct_2']:.3f}"
        )
    return line


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _cell(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def results_table(summary: dict[str, Any], config) -> str:
    """The run's scores as a Markdown table under a line saying what was evaluated how; then
    the replies' statistics beside the references', and the final student's sample replies."""
    names = {"teacher": "teacher", "start": "student (start)", "final": "student (after)"}
    if summary["objective"] == "sft":
        names = {"start": "model (init)", "final": "model (after SFT)"}
    metric, kl = summary["metric"], summary.get("divergence_to_teacher") or {}
    evals = summary.get("evaluations") or {
        k: {metric: v} | ({divergence_key(config): kl[k]} if k in kl else {})
        for k, v in summary["scores"].items()
    }
    shown = {label: evals[key] for key, label in names.items() if key in evals}
    divergences = [divergence_key(config)] if config.eval.divergence_to_teacher else []
    tf = [metric.removeprefix("on_policy_"), *divergences]
    columns = [metric, *divergences, *(TEACHER_FORCED_PREFIX + k for k in tf), *NLL_KEYS]
    columns.append("answer_accuracy")  # chat records with checkable answers
    columns = [c for c in columns if c == metric or any(c in r for r in shown.values())]
    rows = [[label, *(_cell(r.get(c), ".4f") for c in columns)] for label, r in shown.items()]
    head = (
        f"Evaluation on {config.eval.num_examples} held-out {summary['task']} problems "
        f"({describe_decoding(config)})"
    )
    lines = [head, *_markdown(["model", *columns], rows)]
    replies = {label: r for label, r in shown.items() if "reply_tokens" in r}
    if replies and "reference_replies" in summary:
        replies = {"references": summary["reference_replies"], **replies}
        specs = dict(reply_tokens=".1f", distinct_1=".3f", distinct_2=".3f")
        stats = [n for n in reply_stats.NAMES if n != "reply_truncated"]
        rows = [[label, *(_cell(r.get(n), specs.get(n, ".2f")) for n in stats)]
                for label, r in replies.items()]  # fmt: skip
        lines += ["", "Replies (content tokens: a reply's final stop token not counted):"]
        lines += _markdown(["replies of", *stats], rows)
    if summary.get("samples"):
        lines += ["", f"Sample replies of the {names['final']}, prompt -> reply:"]
        lines += reply_stats.sample_lines(summary["samples"])
    return "\n".join(lines)
