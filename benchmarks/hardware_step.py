"""The on-policy GKD step on an accelerator: s/step, tokens/s and MFU, beside TRL's GKDTrainer.

The one command (ours on each pair, then TRL's runner where torch + CUDA + trl are there; JSON
lines on stdout, and appended to $OUT/hardware.jsonl when OUT is set):

    bash benchmarks/hardware.sh            # GPU/TPU: a few minutes
    bash benchmarks/hardware.sh --quick    # CPU: tiny pair, 2 steps (tests/test_hardware_bench.py)

Pairs (random weights, no download): `bench`, the Qwen2 pair of
../shared/bench/make_tiny_hf_models.py (teacher 50.5M, student 19.7M, vocabulary 32,768), and
`qwen2.5-0.5b-1.5b`, student Qwen2.5-0.5B and teacher Qwen2.5-1.5B as shaped by
gkd_jax/assets/shapes (vocabulary 151,936, tied embeddings). Defaults: batch 8, 512 prompt
tokens (random ids, no padding) + 128 tokens sampled from the student at temperature 1 (lmbda 1:
every step on-policy), JSD(0.5), token mean, AdamW; bfloat16 compute, float32 student master
weights and Adam moments, the frozen teacher held in the compute dtype. `--quick`: the `tiny`
pair, float32, batch 2, 8 + 4 tokens, 2 timed steps.

`--impl ours` builds each model with `nnx` init from its config.json shape and runs the trainer's
own step, built by benchmarks/gkd_step.py (`build_step`: `step.gkd_completions` over
`sampling.make_sampler`, then `step.make_train_step`: teacher scoring, JSD, gradient, AdamW) and
timed by its `time_steps`: each step blocked until ready, the first `--warmup` steps (compilation)
not counted. One device, no mesh. One line per pair:

  {"impl": "gkd_jax", "pair", "batch", "prompt_len", "new_tokens", "s_per_step" (median),
   "tokens_per_s" (batch x (prompt + new) / s_per_step), "sampled_tokens_per_s",
   "model_flops_per_step", "mfu", "device", "peak_flops", "sample_s", "update_s", ...}

Model FLOPs are the planner's count (`planning.planner.model_flops`: 2 per multiply-add of each
token with the weights it passes, the student's backward twice its forward, attention scores not
counted; sampler + update), for the nominal batch x (prompt + new) tokens, on both sides. MFU =
model FLOPs / s_per_step / the device's dense bfloat16 peak (PEAK_BF16_FLOPS by device_kind;
unknown kinds and CPUs: "mfu": null), also for float32 runs (the usual convention).

`--impl trl` writes the same pairs as Hugging Face directories (make_tiny_hf_models.py's tokenizer
and prompts of `prompt_len - 3` words, so that the chat-templated prompt is prompt_len tokens;
`qwen2.5-*` models replaced by random Qwen2ForCausalLM of those shapes) and runs
../shared/bench/trl_gkd_anchor.py on them (float32, as that runner loads models; `--lmbda 1`,
same batch, new tokens, steps and warm-up), then prints {"impl": "trl", ...} with the same
fields from its median step. Without trl/datasets, torch, CUDA (`--trl-cpu` allows a CPU run) or
the runner it prints {"impl": "trl", "skipped": "why"} instead.

On a lent device machine (a GPU host that gets a copy of the working tree): the image has jax,
flax, optax, torch and transformers but not ml_collections (gkd_jax needs it), trl, datasets (and
datasets' dill, multiprocess), and ../shared does not travel. Here, once, in the repository root:

    printf '/.whl/\\n/.bench/\\n' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl ml_collections trl datasets dill multiprocess
    mkdir -p .bench && cp ../shared/bench/*.py .bench/

then run with carry [".whl", ".bench"] and the command `bash benchmarks/hardware.sh` (it installs
.whl/*.whl into /tmp/site and finds the runners in .bench; BENCH=DIR names another folder). These
wheels were checked to download (trl 1.16.0, datasets 5.2.0: together under 2 MB); datasets 5.x
wants pyarrow >= 24: add that wheel (~45 MB) if TRL's line reports an older pyarrow there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Dense bfloat16 FLOP/s of one device (GPU or TPU chip), by a substring of its device kind (jax's
# device_kind, torch's device name); the first match counts, so longer names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("V100", 125e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12),  # v6e
    ("TPU v6e", 918e12),
    ("TPU v4", 275e12),
)
QWEN_PAIR = "qwen2.5-0.5b-1.5b"
PAIRS = ("tiny", "bench", QWEN_PAIR)


def peak_flops(kind: str) -> float | None:
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in kind.lower():
            return flops
    return None


def qwen2(vocab, hidden, layers, heads, kv, inter, *, tied=False, eos=6) -> dict:
    """A Qwen2 config.json as a dict (make_tiny_hf_models.py's build_model fields)."""
    return dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=vocab,
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=eos, pad_token_id=0,
    )  # fmt: skip


def pair_configs(pair: str) -> tuple[dict, dict]:
    """(student, teacher) Hugging Face config dicts of a pair."""
    if pair == "tiny":
        return qwen2(512, 32, 1, 2, 1, 64), qwen2(512, 64, 2, 4, 2, 128)
    if pair == "bench":  # make_tiny_hf_models.py SIZES, vocabulary 32,768
        return qwen2(32768, 256, 4, 4, 2, 704), qwen2(32768, 512, 6, 8, 2, 1408)
    if pair == QWEN_PAIR:
        shapes = os.path.join(ROOT, "gkd_jax", "assets", "shapes")
        read = [
            json.load(open(os.path.join(shapes, name, "config.json")))
            for name in ("qwen2.5-0.5b", "qwen2.5-1.5b")
        ]
        return read[0], read[1]
    raise ValueError(f"pair {pair!r}: one of {PAIRS}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", default="ours", choices=("ours", "trl"))
    ap.add_argument("--quick", action="store_true", help="CPU smoke: tiny pair, 2 steps")
    ap.add_argument("--pairs", default=f"bench,{QWEN_PAIR}", help=f"comma list of {PAIRS}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--loss-impl", default="auto", help="config.gkd.loss_impl")
    ap.add_argument("--bench", default=os.environ.get("BENCH", ""), help="the TRL runners' dir")
    ap.add_argument("--trl-python", default=os.environ.get("TRL_PY", sys.executable))
    ap.add_argument("--trl-cpu", action="store_true", help="run TRL without CUDA too")
    ap.add_argument("--trl-timeout", type=int, default=300, help="seconds per TRL pair")
    ap.add_argument("--models-dir", default="/tmp/hardware-bench-models")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.batch, args.prompt_len, args.new_tokens = "tiny", 2, 8, 4
        args.steps, args.warmup, args.dtype = 2, 1, "float32"
    args.pairs = [p for p in args.pairs.split(",") if p]
    for p in args.pairs:
        pair_configs(p)  # a ValueError names the pairs
    return args


def step_config(args: argparse.Namespace):
    """benchmarks/gkd_step.py's config (TRL's GKDConfig settings) at this run's sizes."""
    import gkd_step

    ns = argparse.Namespace(
        models="", dtype=args.dtype, max_prompt_len=args.prompt_len, batch=args.batch,
        max_new_tokens=args.new_tokens, steps=args.steps, warmup=args.warmup, lmbda=1.0,
        beta=0.5, loss_impl=args.loss_impl,
    )  # fmt: skip
    c = gkd_step.bench_config(ns)
    c.param_dtype = "float32"  # master weights and AdamW moments
    c.teacher_param_dtype = args.dtype  # the frozen teacher in the compute dtype
    return c


def flops_of(student, teacher, args) -> float:
    """The planner's model FLOPs of one on-policy step (sampler + update) for params trees."""
    from gkd_jax.planning import planner as plan

    f = plan.model_flops(student, teacher, args.batch, args.prompt_len, args.new_tokens)
    return f["sampler"] + f["update"]


def decoder_config(hf: dict):
    from gkd_jax.models.hf import family_for_model_type

    return family_for_model_type(hf["model_type"]).config_from_hf(hf)


def random_batches(batch: int, prompt_len: int, new: int, vocab: int, seed: int = 0):
    """Batches of random prompt ids (no padding) and empty dataset completions (lmbda 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        yield {
            "prompt": rng.integers(10, vocab, (batch, prompt_len), dtype=np.int32),
            "prompt_mask": np.ones((batch, prompt_len), bool),
            "completion": np.zeros((batch, new), np.int32),
            "completion_mask": np.zeros((batch, new), bool),
        }


def line(args, impl: str, pair: str, s_per_step: float, flops: float, device: str) -> dict:
    peak = peak_flops(device)
    tokens = args.batch * (args.prompt_len + args.new_tokens)
    return {
        "impl": impl, "pair": pair, "batch": args.batch, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "s_per_step": round(s_per_step, 4),
        "tokens_per_s": round(tokens / s_per_step, 1),
        "sampled_tokens_per_s": round(args.batch * args.new_tokens / s_per_step, 1),
        "model_flops_per_step": flops,
        "mfu": round(flops / s_per_step / peak, 4) if peak else None,
        "device": device, "peak_flops": peak, "steps": args.steps,
    }  # fmt: skip


def run_ours(args, pair: str) -> dict:
    import gkd_step
    import jax
    import numpy as np

    from gkd_jax.models import COMPUTE_DTYPES
    from gkd_jax.models.hf import build_model

    config = step_config(args)
    t0 = time.perf_counter()
    s_hf, t_hf = pair_configs(pair)
    s_cfg, t_cfg = decoder_config(s_hf), decoder_config(t_hf)
    compute = COMPUTE_DTYPES[config.dtype]
    student = build_model(s_cfg, dtype=compute, param_dtype=COMPUTE_DTYPES[config.param_dtype])
    teacher = build_model(
        t_cfg, dtype=compute, param_dtype=COMPUTE_DTYPES[config.teacher_param_dtype], seed=1
    )
    vocab = min(s_cfg.vocab_size, t_cfg.vocab_size)
    eos = np.atleast_1d(s_hf.get("eos_token_id", 1)).tolist()
    samplers, train_step, state, teacher_params = gkd_step.build_step(
        config, student, teacher, tuple(eos), 0, vocab
    )
    del student, teacher
    flops = flops_of(state["params"], teacher_params, args)
    data = random_batches(args.batch, args.prompt_len, args.new_tokens, vocab, config.seed)
    jax.block_until_ready((state, teacher_params))
    setup_s = time.perf_counter() - t0
    (step_s, _, sample_s, update_s, sampled), m = gkd_step.time_steps(
        config, samplers, train_step, state, teacher_params, data
    )
    w, dev = args.warmup, jax.devices()[0]
    out = line(args, "gkd_jax", pair, statistics.median(step_s[w:]), flops, dev.device_kind)
    return out | {
        "sample_s": gkd_step.median(sample_s[w:]),
        "update_s": gkd_step.median(update_s[w:]),
        "step_times_s": [round(t, 4) for t in step_s[w:]],
        "warmup_s": round(sum(step_s[:w]), 2),
        "setup_s": round(setup_s, 1),
        "mean_sampled_tokens": round(float(np.mean(sampled[w:])), 1),
        "dtype": config.dtype,
        "param_dtype": f"{config.param_dtype}/{config.teacher_param_dtype}",
        "loss_impl": config.gkd.loss_impl,
        "platform": dev.platform,
        "jax": jax.__version__,
        "final_loss": round(float(m["loss"]), 4),
    }


# ---------------------------------------------------------------------------- TRL's side
def bench_dir(args) -> str | None:
    here = (os.path.join(ROOT, ".bench"), os.path.join(ROOT, "..", "shared", "bench"))
    for d in (args.bench, *here):
        if d and os.path.isfile(os.path.join(d, "trl_gkd_anchor.py")):
            return os.path.abspath(d)
    return None


def trl_unavailable(args) -> str | None:
    """Why TRL's runner cannot run here (None: it can), checked in its own Python."""
    probe = (
        "import importlib.util as u, json\n"
        "need = ('torch', 'transformers', 'accelerate', 'trl', 'datasets')\n"
        "miss = [m for m in need if not u.find_spec(m)]\n"
        "cuda = not miss and __import__('torch').cuda.is_available()\n"
        "print(json.dumps({'missing': miss, 'cuda': bool(cuda)}))\n"
    )
    if not bench_dir(args):
        return "no trl_gkd_anchor.py (BENCH, .bench/ or ../shared/bench)"
    try:
        r = subprocess.run(
            [args.trl_python, "-c", probe], capture_output=True, text=True, timeout=120
        )
        found = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - any failure is a reason to skip
        return f"probing {args.trl_python} failed: {type(e).__name__}: {e}"
    if found["missing"]:
        return f"not importable in {args.trl_python}: {', '.join(found['missing'])}"
    if not found["cuda"] and not args.trl_cpu:
        return "torch.cuda.is_available() is False (--trl-cpu runs TRL on CPU)"
    return None


MAKE_QWEN = """
import sys, json, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
out, hf = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(len(out))
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = Qwen2ForCausalLM(Qwen2Config(**hf))
model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
"""


def make_hf_pair(args, pair: str, bench: str) -> str:
    """DIR/{tokenizer,student,teacher,prompts.jsonl} for trl_gkd_anchor.py (kept between runs)."""
    out = os.path.join(args.models_dir, f"{pair}-p{args.prompt_len}-n{args.new_tokens}")
    if os.path.isfile(os.path.join(out, "done")):
        return out
    s_hf, t_hf = pair_configs(pair)
    cmd = [args.trl_python, os.path.join(bench, "make_tiny_hf_models.py"), "--out", out]
    cmd += ["--vocab", str(s_hf["vocab_size"]), "--prompt-words", str(max(1, args.prompt_len - 3))]
    cmd += ["--completion-words", str(args.new_tokens), "--examples", str(max(64, 4 * args.batch))]
    subprocess.run(cmd, check=True, capture_output=True, timeout=args.trl_timeout)
    if pair != "bench":  # the bench pair is that script's own; the others: these shapes
        for name, hf in (("student", s_hf), ("teacher", t_hf)):
            hf = {k: v for k, v in hf.items() if k not in ("architectures", "torch_dtype")}
            hf |= dict(bos_token_id=1, eos_token_id=6, pad_token_id=0)  # the word tokenizer's
            subprocess.run(
                [args.trl_python, "-c", MAKE_QWEN, os.path.join(out, name), json.dumps(hf)],
                check=True, capture_output=True, timeout=args.trl_timeout,
            )  # fmt: skip
    open(os.path.join(out, "done"), "w").close()
    return out


def run_trl(args, pair: str) -> dict:
    import jax

    from gkd_jax.models import functional_lm
    from gkd_jax.planning.planner import abstract_model

    f32 = jax.numpy.float32
    bench = bench_dir(args)
    models = make_hf_pair(args, pair, bench)
    cmd = [args.trl_python, os.path.join(bench, "trl_gkd_anchor.py"), "--models", models]
    cmd += ["--lmbda", "1.0", "--batch", str(args.batch), "--max-new-tokens", str(args.new_tokens)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.trl_timeout)
    found = [s for s in r.stdout.splitlines() if s.startswith("{")]
    if r.returncode or not found:
        tail = (r.stderr or r.stdout)[-600:]
        return {"impl": "trl", "pair": pair, "error": f"rc {r.returncode}: {tail}"}
    anchor = json.loads(found[-1])
    params = [
        functional_lm(abstract_model(decoder_config(hf), dtype=f32, param_dtype=f32))[0]
        for hf in pair_configs(pair)
    ]
    device = subprocess.run(
        [args.trl_python, "-c", "import torch; c = torch.cuda.is_available(); "
         "print(torch.cuda.get_device_name() if c else 'cpu')"],
        capture_output=True, text=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    flops = flops_of(*params, args)
    return line(args, "trl", pair, anchor["median_step_s"], flops, device) | {
        "dtype": "float32",
        "anchor": anchor,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    if args.impl == "trl":
        why = trl_unavailable(args)
        if why:
            print(json.dumps({"impl": "trl", "skipped": why}), flush=True)
            return
        import jax

        jax.config.update("jax_platforms", "cpu")  # FLOP counts only: leave the GPU to torch
    for pair in args.pairs:
        try:
            out = run_ours(args, pair) if args.impl == "ours" else run_trl(args, pair)
        except Exception as e:  # noqa: BLE001 - one pair's failure (e.g. out of memory) is a line
            out = {"impl": "gkd_jax" if args.impl == "ours" else "trl", "pair": pair,
                   "error": f"{type(e).__name__}: {str(e)[:600]}"}  # fmt: skip
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
