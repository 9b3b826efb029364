"""Time our on-policy GKD step on the make_tiny_hf_models.py pair, beside TRL's and EasyDeL's.

Same workload, flags and JSON line as ../shared/bench/trl_gkd_anchor.py: batch 8 chat prompts
from prompts.jsonl, `--max-new-tokens` sampled from the student at temperature 1, teacher scoring,
JSD(beta), AdamW at 1e-4 (TRL's defaults: b2 0.999, no weight decay, grad clip 1, token mean).
The step is the trainer's own pieces, built from `base_config()` as `train_and_evaluate` builds
them: `step.gkd_completions` (the lmbda draw and `sampling.make_sampler` over the student's
`LMFunctions.decoding`) and `step.make_train_step` (teacher + student forward, JSD, AdamW).
The first `--warmup` steps (compilation) are not counted; each step is blocked until ready.

    python benchmarks/gkd_step.py --models /tmp/bench-models --lmbda 1.0 --steps 6

Prints one JSON line: median_step_s, steps, examples_per_s, plus the parts (median_sample_s,
median_update_s: sampling and the jitted update, each blocked), median_step_cpu_s (process CPU
seconds) and compile_s. `--loss-impl` selects config.gkd.loss_impl (default "auto", base_config's:
the chunked loss here, with its gradient computed in the forward pass; "full" from whole logits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gkd_jax.config.checks import validate_config  # noqa: E402
from gkd_jax.config.defaults import base_config  # noqa: E402
from gkd_jax.data import pipeline  # noqa: E402
from gkd_jax.data.tasks import get_task  # noqa: E402
from gkd_jax.decoding.sampling import make_sampler  # noqa: E402
from gkd_jax.models import (  # noqa: E402
    COMPUTE_DTYPES,
    functional_lm,
    sources,
)
from gkd_jax.training import optim
from gkd_jax.training import step as step_lib  # noqa: E402


def bench_config(args: argparse.Namespace):
    """base_config() with the anchor's settings (trl_gkd_anchor.py's GKDConfig)."""
    c = base_config()
    c.task = "chat"
    c.objective = "gkd"
    c.dtype = args.dtype
    c.init.checkpoint = os.path.join(args.models, "student")
    # The anchors' tokenizer directory: in a model directory transformers (5.x) picks the
    # model_type's tokenizer class (Qwen2Tokenizer), which splits these word-level ids wrongly.
    c.tokenizer = os.path.join(args.models, "tokenizer")
    c.teacher.checkpoint = os.path.join(args.models, "teacher")
    c.data.train_file = os.path.join(args.models, "prompts.jsonl")
    c.data.max_prompt_len = args.max_prompt_len or 2048  # 0: the longest prompt (set in main)
    c.eval.num_examples = args.batch  # the chat task holds these out; unused here
    c.batch_size = args.batch
    c.max_new_tokens = args.max_new_tokens
    c.steps = args.steps + args.warmup
    c.gkd.lmbda = args.lmbda
    c.gkd.beta = args.beta
    c.gkd.reduction = "token"  # TRL's batchmean over completion tokens
    c.gkd.loss_impl = args.loss_impl
    c.sampling.temperature = 1.0
    c.optim.learning_rate = 1e-4  # TRL: AdamW(1e-4, b2 0.999, wd 0), max_grad_norm 1
    c.optim.warmup_steps = 0
    c.optim.final_lr_fraction = 1.0
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    return c


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4) if xs else 0.0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bench-models")
    ap.add_argument("--lmbda", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--max-prompt-len",
        type=int,
        default=0,
        help="prompt padding (0: the longest prompt, as TRL's dynamic padding gives)",
    )
    ap.add_argument("--dtype", default="float32", choices=sorted(COMPUTE_DTYPES))
    ap.add_argument(
        "--loss-impl", default="auto", help="config.gkd.loss_impl (auto/full/chunked/fused)"
    )
    args = ap.parse_args()
    args.models = os.path.abspath(os.path.expanduser(args.models))
    return args


def setup(args: argparse.Namespace):
    """What the trainer's setup builds, for the benchmark's config: (config, samplers, train
    step, train state, teacher params, batch iterator)."""
    config = bench_config(args)
    tokenizer, stops = sources.load_or_build_tokenizer(config, "/tmp/gkd-step-bench")
    validate_config(config, vocab_size=len(tokenizer))  # what train_and_evaluate checks first
    task = get_task(config.task)
    train_split, _ = task.load(config, tokenizer, stops, log=lambda _: None)
    if not args.max_prompt_len:
        config.data.max_prompt_len = max(len(p) for p in train_split.prompt_ids)
    data = pipeline.pack_split(train_split, config, tokenizer.pad_token_id)
    dtype = COMPUTE_DTYPES[config.dtype]
    student = sources.obtain_model(config.init, "", "init", dtype)
    teacher = sources.obtain_model(config.teacher, "", "teacher", dtype)
    vocab = sources.shared_vocab_size(config, tokenizer, student, teacher)
    built = build_step(config, student, teacher, stops, tokenizer.pad_token_id, vocab)
    data_iter = pipeline.batches(data, config.batch_size, config.seed)
    return config, *built, data_iter


def build_step(config, student, teacher, stops, pad_id: int, vocab: int):
    """The trainer's step pieces over two models: (samplers, jitted train step, train state,
    teacher params). benchmarks/hardware_step.py builds its steps with this too."""
    params, student_fns = functional_lm(student)
    teacher_params, teacher_fns = functional_lm(teacher)
    sampling = step_lib.training_sampling(config, stops, pad_id, vocab)
    samplers = {
        "student": make_sampler(student_fns.decoding, sampling),
        "teacher": make_sampler(teacher_fns.decoding, sampling),
    }
    tx = optim.make_optimizer(config)
    train_step = step_lib.make_train_step(config, student_fns, teacher_fns, tx)
    state = {"params": params, "opt_state": tx.init(params), "step": np.int32(0)}
    return samplers, train_step, state, teacher_params


def time_steps(config, samplers, train_step, state, teacher_params, data_iter):
    """config.steps GKD steps, each timed: (step_s, cpu_s, sample_s, update_s, sampled tokens per
    example) lists, and the last step's metrics."""
    base_key = jax.random.key(config.seed)
    step_s, cpu_s, sample_s, update_s, sampled = [], [], [], [], []
    for step in range(config.steps):
        batch = {k: jax.device_put(v) for k, v in next(data_iter).items()}
        t0, c0 = time.perf_counter(), time.process_time()
        completion, completion_mask, _ = step_lib.gkd_completions(
            config, step, samplers, state["params"], teacher_params, base_key,
            batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"],
        )  # fmt: skip
        jax.block_until_ready(completion_mask)
        t1 = time.perf_counter()
        state, m = train_step(
            state,
            teacher_params,
            dict(
                prompt=batch["prompt"],
                prompt_mask=batch["prompt_mask"],
                completion=completion,
                completion_mask=completion_mask,
            ),
        )
        jax.block_until_ready((state, m))
        t2 = time.perf_counter()
        step_s.append(t2 - t0)
        cpu_s.append(time.process_time() - c0)
        sample_s.append(t1 - t0)
        update_s.append(t2 - t1)
        sampled.append(float(np.asarray(completion_mask).sum(1).mean()))
    return (step_s, cpu_s, sample_s, update_s, sampled), m


def main() -> None:
    args = parse_args()
    t_setup = time.perf_counter()
    config, *built = setup(args)
    setup_s = time.perf_counter() - t_setup
    (step_s, cpu_s, sample_s, update_s, sampled), m = time_steps(config, *built)
    w = args.warmup
    med = statistics.median(step_s[w:])
    print(
        json.dumps(
            {
                "impl": "gkd_jax",
                "lmbda": args.lmbda,
                "beta": args.beta,
                "batch": args.batch,
                "max_new_tokens": args.max_new_tokens,
                "median_step_s": round(med, 4),
                "steps": len(step_s) - w,
                "examples_per_s": round(args.batch / med, 3),
                # CPU seconds of all threads: steadier than wall time on a shared machine.
                "median_step_cpu_s": median(cpu_s[w:]),
                "median_sample_s": median(sample_s[w:]),
                "median_update_s": median(update_s[w:]),
                "step_times_s": [round(t, 3) for t in step_s[w:]],
                "warmup_step_s": round(sum(step_s[:w]), 2),
                "compile_s": round(sum(step_s[:w]) - w * med, 2),
                "prompt_len": config.data.max_prompt_len,
                "mean_sampled_tokens": round(float(np.mean(sampled[w:] or sampled)), 1),
                "dtype": config.dtype,
                "loss_impl": config.gkd.loss_impl,
                "jax": jax.__version__,
                "device": jax.devices()[0].platform,
                "devices": jax.device_count(),
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "setup_s": round(setup_s, 1),
                "final_loss": round(float(m["loss"]), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
