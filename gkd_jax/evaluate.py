"""Evaluate a checkpoint on a task split: decode, score, write predictions and metrics.

    python -m gkd_jax.evaluate --config=configs/arith.py --checkpoint=/tmp/gkd-arith \\
        [--split=eval] [--out=DIR] [--num_examples=N] [--config.eval.decoding=beam]

--checkpoint: our model dir (WORKDIR/model, WORKDIR/best_model, `builtin:arith/student_sft`), a
workdir (its model/), or a Hugging Face directory (or hub id). The config gives the task, its
data, max_new_tokens, data.max_prompt_len and eval.* (decoding, beam_size, length_penalty,
batch_size); the checkpoint alone gives the model. A task without a metric of its own (chat)
is scored as in training, by the model's divergence from config.teacher on its completions.
Beside the scores: the replies' statistics (reply_stats.py: length, stop rate, distinct-1/2,
repetition; a warning when they collapse) and, with config.eval.teacher_forced, the references
scored teacher-forced (the model's NLL of them, and the divergences on them).
Writes OUT/predictions.jsonl (one {"prompt", "prediction", "reference"} per example) and
OUT/metrics.json, and prints a table.

--benchmark=mmlu|bbh scores the checkpoint on a held-out benchmark from local files instead
(--data_dir, --shots; --config optional): see gkd_jax/evaluation/benchmarks/runner.py.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gkd_jax.config import cli
from gkd_jax.evaluation.checkpoints import SPLITS, benchmark_checkpoint, evaluate_checkpoint
from gkd_jax.parallel import distributed


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program: importing this module (tests, other
    tools) adds nothing to absl's global flags (gkd_jax.export also has an --out)."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file: task, data, max_new_tokens, eval.*.", lock_config=True
    )
    flags.DEFINE_string(
        "checkpoint", None, "Our model dir, a workdir (its model/), or a Hugging Face directory."
    )
    flags.DEFINE_enum("split", "eval", list(SPLITS), "Which split of the task.")
    flags.DEFINE_string("out", None, "Output dir (default: WORKDIR/eval_SPLIT or ./eval_SPLIT).")
    flags.DEFINE_integer("num_examples", None, "Evaluate the first N examples only.")
    flags.mark_flags_as_required(["checkpoint"])  # --config too, unless --benchmark
    from gkd_jax.evaluation.benchmarks import (
        runner,  # --benchmark, --data_dir, --shots, ... (its flags)
    )

    runner.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
    distributed.initialize_from_env()
    f = flags.FLAGS
    if f.benchmark:
        from gkd_jax.evaluation.benchmarks import runner

        tokenizer = f.config.tokenizer if f.config else ""
        options = runner.options_from_flags(f)
        benchmark_checkpoint(f.benchmark, f.checkpoint, out=f.out, dtype=f.dtype,
                             tokenizer=tokenizer, **options)  # fmt: skip
        return
    if f.config is None:
        raise app.UsageError("--config is required (unless --benchmark is given)")
    evaluate_checkpoint(
        f.config, f.checkpoint, split=f.split, out=f.out, num_examples=f.num_examples
    )


if __name__ == "__main__":
    define_flags()
    cli.run_app(main)
