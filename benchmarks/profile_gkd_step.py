"""Where the GKD step's time goes: each piece of benchmarks/gkd_step.py timed alone.

    python benchmarks/profile_gkd_step.py --models /tmp/bench-models [--repeats 5]

Prints one JSON line per piece with wall and process CPU seconds (all threads; on a shared
machine CPU seconds are the steadier number) and, for the model pieces, GFLOP/s of their matmuls.
Pieces: the sampler (prefill + 64 decode steps), the prefill and one decode step alone, the
teacher's scoring forward, the student's scoring forward + backward, the JSD forward + backward on
[B, N, V] logits, and the whole jitted update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gkd_step import bench_config  # noqa: E402
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler  # noqa: E402
from gkd_jax.models import (
    functional_lm,
    sources,
)
from gkd_jax.objectives import losses  # noqa: E402
from gkd_jax.training import optim
from gkd_jax.training import step as step_lib  # noqa: E402

ONLY: set[str] | None = None


def timed(name: str, fn, repeats: int, flop: float = 0.0) -> dict | None:
    if ONLY is not None and name not in ONLY:
        return None
    jax.block_until_ready(fn())  # compile
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    row = {"piece": name, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
    if flop:
        row["gflop"] = round(flop / 1e9, 2)
        row["gflop_per_cpu_s"] = round(flop / 1e9 / cpu, 1)
    print(json.dumps(row), flush=True)
    return row


def matmul_params(params) -> tuple[int, int]:
    """(layer, head) parameters that take part in a matmul per token: every 2-D kernel, the
    output head apart (it runs on fewer rows: the scored ones, or one per row when decoding)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = {jax.tree_util.keystr(path): int(np.prod(v.shape)) for path, v in flat if v.ndim == 2}
    head = sum(n for k, n in sizes.items() if "lm_head" in k)
    if not head:  # tied: the embedding is the head
        head = sum(n for k, n in sizes.items() if "embed_tokens" in k)
    layers = sum(n for k, n in sizes.items() if "lm_head" not in k and "embed_tokens" not in k)
    return layers, head


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bench-models")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=35)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated pieces to time (default: all)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--loss-impl", default="full")
    args = ap.parse_args()
    args.models = os.path.abspath(os.path.expanduser(args.models))
    args.lmbda, args.beta, args.steps, args.warmup = 1.0, 0.5, 1, 0
    args.max_prompt_len = args.prompt_len
    return args


def main() -> None:
    args = parse_args()
    global ONLY
    ONLY = set(args.only.split(",")) if args.only else None
    config = bench_config(args)
    dtype = jnp.float32 if args.dtype == "float32" else jnp.bfloat16
    student = sources.obtain_model(config.init, "", "init", dtype)
    teacher = sources.obtain_model(config.teacher, "", "teacher", dtype)
    params, s_fns = functional_lm(student)
    t_params, t_fns = functional_lm(teacher)
    b, p, n = args.batch, args.prompt_len, args.max_new_tokens
    v = student.cfg.vocab_size
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(7, v, (b, p)), jnp.int32)
    prompt_mask = jnp.ones((b, p), bool)
    completion = jnp.asarray(rng.integers(7, v, (b, n)), jnp.int32)
    completion_mask = jnp.ones((b, n), bool)
    key = jax.random.key(0)
    r = args.repeats
    (s_l, s_h), (t_l, t_h) = matmul_params(params), matmul_params(t_params)
    tokens = b * (p + n)

    cfg = SamplingConfig(max_new_tokens=n, temperature=1.0, stop_ids=(6,), pad_id=0, vocab_size=v)
    sampler = make_sampler(s_fns.decoding, cfg)
    timed("sampler", lambda: sampler(params, prompt, prompt_mask, key).tokens, r,
          2 * (s_l * b * (p + n) + s_h * b * (n + 1)))  # fmt: skip
    prefill = jax.jit(lambda pr, x, m: s_fns.decoding.prefill(pr, x, m, n))
    timed("prefill", lambda: prefill(params, prompt, prompt_mask), r, 2 * (s_l * b * p + s_h * b))
    _, state = prefill(params, prompt, prompt_mask)
    step = jax.jit(s_fns.decoding.step)
    tok = completion[:, 0]
    timed(
        "decode_step", lambda: step(params, tok, jnp.int32(3), state)[0], r * 4, 2 * (s_l + s_h) * b
    )

    args4 = (prompt, prompt_mask, completion, completion_mask)
    t_score = jax.jit(t_fns.score)
    t_flop = 2 * (t_l * tokens + t_h * b * n)  # the head on the N scored rows only
    s_flop = 2 * (s_l * tokens + s_h * b * n)
    timed("teacher_score", lambda: t_score(t_params, *args4), r, t_flop)
    if t_fns.hidden is not None:  # the head on the completion positions only
        t_head = jax.jit(lambda q, *a: t_fns.hidden(q, *a) @ t_fns.unembedding(q))
        timed("teacher_hidden_head", lambda: t_head(t_params, *args4), r)
    w = jnp.asarray(rng.standard_normal((b, n, v)), jnp.float32)

    @jax.jit
    def s_grad(pr, w, *args4):
        return jax.grad(lambda q: jnp.sum(s_fns.score(q, *args4) * w))(pr)

    timed("student_score_fwd_bwd", lambda: s_grad(params, w, *args4), r, 3 * s_flop)
    s_logits = jnp.asarray(rng.standard_normal((b, n, v)), jnp.float32)
    t_logits = jnp.asarray(rng.standard_normal((b, n, v)), jnp.float32)

    @jax.jit
    def loss_grad(s, t):
        return jax.grad(lambda x: jnp.sum(losses.generalized_jsd(x, t, beta=0.5)))(s)

    timed("jsd_fwd_bwd", lambda: loss_grad(s_logits, t_logits), r)
    tx = optim.make_optimizer(config)
    train_step = step_lib.make_train_step(config, s_fns, t_fns, tx)
    holder = [{"params": params, "opt_state": tx.init(params), "step": np.int32(0)}]
    batch = dict(prompt=prompt, prompt_mask=prompt_mask, completion=completion,
                 completion_mask=completion_mask)  # fmt: skip

    def update():
        holder[0], m = train_step(holder[0], t_params, batch)
        return m["loss"]

    timed("update", update, r, t_flop + 3 * s_flop)


if __name__ == "__main__":
    main()
