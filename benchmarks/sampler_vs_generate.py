"""Our sampler alone vs transformers' `generate`, on the student of make_tiny_hf_models.py.

The same BATCH chat prompts from prompts.jsonl (TRL's tokenization: messages[:-1] + generation
prompt, left-padded), MAX_NEW_TOKENS new tokens, greedy and sampling at temperature 1 (no top-k /
top-p), both stopping at the tokenizer's EOS, float32 on CPU. One JSON line per (impl, mode):
median seconds per `generate` call, new tokens per second, and the mean new tokens per row.

    python benchmarks/sampler_vs_generate.py --impl gkd_jax --models /tmp/bench-models
    ~/ref-venv/bin/python benchmarks/sampler_vs_generate.py --impl transformers \
        --models /tmp/bench-models

`--impl transformers` needs only torch + transformers (the reference venv); `gkd_jax` runs
`gkd_jax.decoding.sampling.make_sampler` over `LMFunctions.decoding` of
`gkd_jax.models.load_pretrained`.
The first call of each mode (compilation, for JAX) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def tokenized_prompts(models: str, batch: int):
    """(tokenizer, prompt id lists) of the first `batch` records, as TRL's collator makes them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(models, "tokenizer"))
    with open(os.path.join(models, "prompts.jsonl")) as f:
        records = [json.loads(line) for line in f][:batch]
    prompts = []
    for rec in records:
        ids = tok.apply_chat_template(
            rec["messages"][:-1], tokenize=True, add_generation_prompt=True, return_dict=False
        )
        prompts.append(list(ids["input_ids"] if isinstance(ids, dict) else ids))
    return tok, prompts


def left_pad(prompts: list[list[int]], pad: int):
    """Left-padded ids and mask as nested lists [B, P]."""
    p = max(map(len, prompts))
    ids = [[pad] * (p - len(x)) + x for x in prompts]
    mask = [[0] * (p - len(x)) + [1] * len(x) for x in prompts]
    return ids, mask


def run_transformers(args, tok, prompts):
    import torch
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(args.models, "student"), dtype=torch.float32
    ).eval()
    ids, mask = left_pad(prompts, tok.pad_token_id)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    for mode in ("greedy", "sample"):
        kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if mode == "sample" else {}
        times, new = [], []
        for i in range(args.repeats + 1):
            torch.manual_seed(i)
            t = time.perf_counter()
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw,
                )  # fmt: skip
            times.append(time.perf_counter() - t)
            gen = out[:, ids.shape[1] :]
            # Tokens up to and including each row's first EOS (generate pads after it).
            is_eos = (gen == tok.eos_token_id).int()
            before = (torch.cumsum(is_eos, 1) - is_eos) == 0
            new.append(before.sum(1).float().mean().item())
        report(
            args, "transformers", mode, times[1:], new[1:], torch_threads=torch.get_num_threads()
        )


def run_gkd_jax(args, tok, prompts):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
    from gkd_jax.models import functional_lm, load_pretrained

    model = load_pretrained(os.path.join(args.models, "student"), dtype=jnp.float32)
    params, fns = functional_lm(model)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)
    for mode in ("greedy", "sample"):
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=1.0 if mode == "sample" else 0.0,
            stop_ids=(tok.eos_token_id,),
            pad_id=tok.pad_token_id,
            vocab_size=fns.vocab_size,
        )
        sampler = make_sampler(fns.decoding, cfg)
        times, new = [], []
        for i in range(args.repeats + 1):
            t = time.perf_counter()
            out = jax.block_until_ready(sampler(params, ids, mask, jax.random.key(i)))
            times.append(time.perf_counter() - t)
            new.append(float(np.asarray(out.mask).sum(1).mean()))
        report(args, "gkd_jax", mode, times[1:], new[1:], compile_s=round(times[0], 2))


def report(args, impl: str, mode: str, times: list[float], new: list[float], **extra) -> None:
    med = statistics.median(times)
    tokens = statistics.mean(new)
    print(
        json.dumps(
            {
                "bench": "sampler_vs_generate",
                "impl": impl,
                "mode": mode,
                "batch": args.batch,
                "max_new_tokens": args.max_new_tokens,
                "median_s": round(med, 4),
                "new_tokens_per_row": round(tokens, 1),
                "tokens_per_s": round(args.batch * tokens / med, 1),
                "calls": len(times),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                **extra,
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True, choices=["gkd_jax", "transformers"])
    ap.add_argument("--models", default="bench-models")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    args.models = os.path.abspath(os.path.expanduser(args.models))
    tok, prompts = tokenized_prompts(args.models, args.batch)
    (run_gkd_jax if args.impl == "gkd_jax" else run_transformers)(args, tok, prompts)


if __name__ == "__main__":
    main()
