"""Time the parts of one on-policy GKD step on the shipped arith pair; prints one JSON line.

    python benchmarks/arith_gkd_step.py [--batch 64] [--repeats 10] [--loss-impl chunked]

Parts: student sampling (max_new_tokens=48, temperature 1), and the jitted update (teacher
scoring + student forward/backward + AdamW). Warm timings: compilation is excluded and reported
apart.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gkd_jax.config.loading import load_config_file  # noqa: E402
from gkd_jax.data import arith, pipeline  # noqa: E402
from gkd_jax.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler  # noqa: E402
from gkd_jax.models import (  # noqa: E402
    COMPUTE_DTYPES,
    functional_lm,
    sources,
)
from gkd_jax.training import optim
from gkd_jax.training import step as step_lib  # noqa: E402


def timed(fn, repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t) / repeats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", default="float32", choices=sorted(COMPUTE_DTYPES))
    ap.add_argument("--loss-impl", default="", help="config.gkd.loss_impl ('': the config's)")
    args = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config_file(os.path.join(repo, "configs", "arith.py"))
    if args.loss_impl:
        config.unlock()
        config.gkd.loss_impl = args.loss_impl
    dtype = COMPUTE_DTYPES[args.dtype]
    teacher = sources.obtain_model(config.teacher, "", "teacher", dtype,
                                   sources.model_config(config.teacher.model))  # fmt: skip
    student = sources.obtain_model(config.init, "", "init", dtype,
                                   sources.model_config(config.model))  # fmt: skip
    tok = build_char_tokenizer(os.path.join("/tmp", "gkd_bench_tok"))
    ex = arith.make_examples("train", args.batch, 0)
    data = pipeline.encode(tok, [e.prompt for e in ex], [e.target for e in ex],
                           max_prompt_len=48, max_completion_len=config.max_new_tokens)  # fmt: skip
    s_params, student_fns = functional_lm(student)
    t_params, teacher_fns = functional_lm(teacher)
    sampler = make_sampler(student_fns.decoding, SamplingConfig(
        config.max_new_tokens, stop_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id))  # fmt: skip
    key = jax.random.key(0)
    sample_first, sample_s = timed(
        lambda: sampler(s_params, data["prompt"], data["prompt_mask"], key), args.repeats
    )
    out = sampler(s_params, data["prompt"], data["prompt_mask"], key)
    tx = optim.make_optimizer(config)
    step = step_lib.make_train_step(config, student_fns, teacher_fns, tx)
    batch = dict(prompt=data["prompt"], prompt_mask=data["prompt_mask"],
                 completion=out.tokens, completion_mask=out.mask)  # fmt: skip
    state = {"params": s_params, "opt_state": tx.init(s_params), "step": np.int32(0)}
    holder = [state]

    def update():
        holder[0], m = step(holder[0], t_params, batch)
        return m["loss"]

    update_first, update_s = timed(update, args.repeats)
    total = sample_s + update_s
    print(json.dumps({
        "bench": "arith_gkd_step", "batch": args.batch, "dtype": args.dtype,
        "loss_impl": config.gkd.loss_impl,
        "max_new_tokens": config.max_new_tokens, "devices": jax.device_count(),
        "sample_s": round(sample_s, 4), "update_s": round(update_s, 4),
        "step_s": round(total, 4), "examples_per_s": round(args.batch / total, 1),
        "compile_s": round(sample_first - sample_s + update_first - update_s, 2),
        "mean_sampled_tokens": float(np.asarray(out.mask).sum(1).mean()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
