"""Peak memory and time of our memory-lean GKD loss, forward + backward; prints one JSON line.

The twin of ../shared/bench/trl_jsd_memory.py (same flags, same JSON fields, peak resident
memory measured the same way), run on one of our forms:

    python benchmarks/loss_memory.py --batch 2 --seq 512 --vocab 151936 --beta 0.5
    python benchmarks/loss_memory.py ... --keep-logits        # gradient into a new buffer
    python benchmarks/loss_memory.py ... --form fused         # from hidden states

  chunked    loss_forms.chunked_jsd_loss on random logits made in place: `extra_peak_mib` is the
             peak RSS above the two logits tensors, as for TRL. By default the student logits are
             donated and the gradient is written over them (as in a training step, where the
             logits are dead after the loss); with --keep-logits they are kept, and the new
             [B, T, V] gradient (`logits_mib`) counts in the extra, as TRL's student.grad does.
  reference  the same, through losses.generalized_jsd on the whole [B, T, V] at once.
  fused      loss_forms.fused_jsd_loss from random hidden states [B, T, D] and unembeddings
             [D, V] (student --hidden, teacher --teacher-hidden): the baseline is those four
             arrays (`baseline_mib`); the extra includes their gradients (mostly dW, [D, V]).
  fused_reference  the same, materializing hidden @ unembed and going through `reference`.

Positions [0, T/4) are masked as in the TRL script, and the loss is TRL's token mean. `seconds`
is the median of --runs warm runs; compilation is timed apart (`compile_seconds`), and its memory
counts in the peak. `xla_temp_mib` is XLA's own figure for the compiled step's scratch memory.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gkd_jax.objectives.loss_forms import chunked_jsd_loss, default_chunk, fused_jsd_loss  # noqa: E402
from gkd_jax.objectives.losses import generalized_jsd, masked_sum_count, mean_from_sum_count  # noqa: E402

MiB = 2**20
FORMS = ("chunked", "reference", "fused", "fused_reference")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def random_normal(key: jax.Array, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    """Normal(0, scale**2) [..., X], drawn a few rows at a time into the output buffer, because one
    jax.random.normal call of this size takes 3x the output in temporaries, which would count in
    the process's peak RSS."""
    n = math.prod(shape[:-1])
    rows = math.gcd(n, 16)

    def body(i, buf):  # [N, X]
        block = scale * jax.random.normal(jax.random.fold_in(key, i), (rows, shape[-1]))
        return lax.dynamic_update_slice_in_dim(buf, block, i * rows, 0)

    flat = lax.fori_loop(0, n // rows, body, jnp.zeros((n, shape[-1]), jnp.float32))
    return flat.reshape(shape)


def loss_fn(form: str, mask: jax.Array, beta: float, chunk: int):
    """Token-mean loss of `form`, a function of (student arrays..., teacher arrays...)."""

    def reference(student_logits, teacher_logits):
        per_token = generalized_jsd(student_logits, teacher_logits, beta=beta)  # [B, T]
        return masked_sum_count(per_token, mask, "token")

    kwargs = {"beta": beta, "reduction": "token", "chunk": chunk}
    forms = {
        "chunked": lambda s, t: chunked_jsd_loss(s, t, mask, **kwargs),
        "reference": reference,
        "fused": lambda hs, ws, ht, wt: fused_jsd_loss(hs, ws, ht, wt, mask, **kwargs),
        "fused_reference": lambda hs, ws, ht, wt: reference(hs @ ws, ht @ wt),
    }
    return lambda *arrays: mean_from_sum_count(*forms[form](*arrays))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--form", choices=FORMS, default="chunked")
    ap.add_argument("--chunk", type=int, default=None, help="positions per chunk (default: auto)")
    ap.add_argument("--keep-logits", action="store_true", help="don't donate the student logits")
    ap.add_argument("--hidden", type=int, default=896, help="fused: student D (Qwen2.5-0.5B)")
    ap.add_argument("--teacher-hidden", type=int, default=1536, help="fused: teacher D (1.5B)")
    args = ap.parse_args()

    b, t, v = args.batch, args.seq, args.vocab
    fused = args.form.startswith("fused")
    chunk = args.chunk or default_chunk(v, fused=fused)
    mask = jnp.broadcast_to(jnp.arange(t) >= t // 4, (b, t))  # [B, T]: TRL's -100 labels
    make = jax.jit(random_normal, static_argnums=(1, 2))
    keys = jax.random.split(jax.random.key(0), 4)
    loss = loss_fn(args.form, mask, args.beta, chunk)

    donate = not fused and not args.keep_logits
    if fused:
        ds, dt = args.hidden, args.teacher_hidden
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        # Scaled so that the logits have unit variance, like the chunked form's.
        make_student = lambda: (make(keys[0], (b, t, ds)), make(keys[1], (ds, v), ds**-0.5))
        teacher = (make(keys[2], (b, t, dt)), make(keys[3], (dt, v), dt**-0.5))
        extra = {"baseline": "student + teacher hidden states and unembeddings"}
        extra |= {"hidden": ds, "teacher_hidden": dt}
    else:
        step = jax.jit(jax.value_and_grad(loss), donate_argnums=(0,) if donate else ())
        make_student = lambda: (make(keys[0], (b, t, v)),)
        teacher = (make(keys[1], (b, t, v)),)
        extra = {"baseline": "student + teacher logits", "grad_over_logits": donate}
    student = make_student()
    baseline_bytes = sum(x.nbytes for x in (*student, *teacher))
    jax.block_until_ready((student, teacher))
    base = rss_mib()

    t0 = time.perf_counter()
    compiled = step.lower(*student, *teacher).compile()
    compile_seconds = time.perf_counter() - t0
    times, grads = [], None
    for _ in range(args.runs):
        if donate and times:  # the last run took the student logits
            grads = None  # free the last gradient before drawing new logits
            student = jax.block_until_ready(make_student())
        t0 = time.perf_counter()
        value, grads = compiled(*student, *teacher)
        jax.block_until_ready(grads)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    temp = compiled.memory_analysis().temp_size_in_bytes

    print(
        json.dumps(
            {
                "impl": "gkd_jax", "form": args.form,
                "chunk": chunk if args.form in ("chunked", "fused") else None,
                "batch": b, "seq": t, "vocab": v, "beta": args.beta,
                "logits_mib": round(b * t * v * 4 / MiB, 1),
                "baseline_mib": round(baseline_bytes / MiB, 1),
                "extra_peak_mib": round(peak - base, 1),
                "seconds": round(statistics.median(times), 3),
                "loss": float(value),
                "compile_seconds": round(compile_seconds, 2),
                "xla_temp_mib": round(temp / MiB, 1),
                **extra,
            }
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
