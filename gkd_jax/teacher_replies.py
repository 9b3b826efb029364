"""The teacher's greedy replies to the real-model study's prompts (gkd_jax/data/real_prompts.py),
written as chat records: the command that makes the study's data
(docs/results/real_heal_protocol.md).

    python -m gkd_jax.teacher_replies --teacher ~/.cache/real-models/smollm2-135m-instruct \
        --out ~/real_heal_data [--train 448 --heldout 112 --seed 0 --max_new_tokens 48]

A command at the top of the package, not in data/: it runs a model (data never imports models).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence

import jax

from gkd_jax.config import cli
from gkd_jax.data import hf_tokenizer, pipeline
from gkd_jax.data.real_prompts import Prompt, make_prompts
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.evaluation.evaluator import decode_split
from gkd_jax.evaluation.metrics import answer_correct
from gkd_jax.models import functional_lm, load_pretrained
from gkd_jax.parallel import sharding


# ------------------------------------------------------------------------------ the teacher
def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """The ids of one user turn with the generation prompt, tokenized as chat.load_examples
    tokenizes a record's prompt (so the teacher answers exactly what the student will see)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def teacher_replies(
    teacher_dir: str,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
) -> tuple[list[str], list[bool]]:
    """(reply, truncated) per prompt: the teacher's greedy reply by our jitted sampler, batched
    (one compile: every batch is padded to the same shape), with a progress line per batch;
    truncated = it ran to max_new_tokens without a stop token."""
    tokenizer = hf_tokenizer.load_hf_tokenizer(teacher_dir)
    stops = hf_tokenizer.stop_ids(tokenizer, teacher_dir)
    params, fns = functional_lm(load_pretrained(teacher_dir))
    cfg = SamplingConfig(
        max_new_tokens, 0.0, stop_ids=stops, pad_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
    )  # fmt: skip
    sampler = make_sampler(fns.decoding, cfg)
    ids = [chat_prompt_ids(tokenizer, t) for t in texts]
    longest = -(-max(map(len, ids)) // 8) * 8  # one prompt width for every batch
    data = pipeline.pack(ids, [[0]] * len(ids), max_prompt_len=longest, max_completion_len=1,
                         pad_id=tokenizer.pad_token_id)  # fmt: skip
    start = time.time()

    def progress(done: int, total: int) -> None:
        log(f"[teacher_replies] teacher replied to {done}/{total} ({time.time() - start:.0f}s)")

    one_device = sharding.make_mesh(devices=jax.devices()[:1])
    tokens, mask = decode_split(sampler, params, data, batch_size, one_device, progress=progress)
    replies, truncated = [], []
    for row_tokens, row_mask in zip(tokens, mask, strict=True):  # [N] each
        kept = row_tokens[row_mask]
        replies.append(tokenizer.decode(kept, skip_special_tokens=True))
        truncated.append(not (len(kept) > 0 and int(kept[-1]) in stops))
    return replies, truncated


def record(prompt: Prompt, reply: str) -> dict:
    """One JSONL record (TRL's conversational format + "family", "answer" if checkable)."""
    messages = [{"role": "user", "content": prompt.text}, {"role": "assistant", "content": reply}]
    rec = {"messages": messages, "family": prompt.family}
    return rec if prompt.answer is None else rec | {"answer": prompt.answer}


def write_split(path: str, prompts: Sequence[Prompt], replies: Sequence[str]) -> int:
    """Write the records; a prompt the teacher answered with nothing at all is left out (a
    chat record needs a non-empty reply). Returns how many were left out."""
    skipped = 0
    with open(path, "w") as f:
        for p, r in zip(prompts, replies, strict=True):
            if not r.strip():
                skipped += 1
                continue
            f.write(json.dumps(record(p, r)) + "\n")
    return skipped


def summarize(prompts: Sequence[Prompt], replies: Sequence[str], truncated: Sequence[bool]):
    """Per family: prompts, the teacher's answer accuracy (checkable ones), replies truncated."""
    out: dict[str, dict] = {}
    for p, r, t in zip(prompts, replies, truncated, strict=True):
        f = out.setdefault(p.family, {"prompts": 0, "truncated": 0})
        f["prompts"] += 1
        f["truncated"] += int(t)
        if p.answer is not None:
            f["correct"] = f.get("correct", 0) + int(answer_correct(r, p.answer))
    for f in out.values():
        if "correct" in f:
            f["teacher_accuracy"] = f.pop("correct") / f["prompts"]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for train.jsonl, heldout.jsonl")
    ap.add_argument("--teacher", required=True, help="the teacher's Hugging Face directory")
    ap.add_argument("--train", type=int, default=448, help="training prompts")
    ap.add_argument("--heldout", type=int, default=112, help="held-out prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_new_tokens", type=int, default=48, help="the study's reply budget")
    ap.add_argument("--batch_size", type=int, default=32)
    args = ap.parse_args(argv)
    out, teacher = (os.path.expanduser(p) for p in (args.out, args.teacher))
    os.makedirs(out, exist_ok=True)
    train, heldout = make_prompts(args.train, args.heldout, args.seed)
    everything = [*heldout, *train]  # held-out first: the evaluation data are ready soonest
    replies, truncated = teacher_replies(
        teacher, [p.text for p in everything], max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )  # fmt: skip
    n = len(heldout)
    summary = {"args": vars(args)}
    for name, prompts, sl in (("heldout", heldout, slice(0, n)), ("train", train, slice(n, None))):
        skipped = write_split(os.path.join(out, f"{name}.jsonl"), prompts, replies[sl])
        summary[name] = {"skipped_empty": skipped,
                         "families": summarize(prompts, replies[sl], truncated[sl])}  # fmt: skip
        print(f"[teacher_replies] {name}: {len(prompts) - skipped} records -> {out}/{name}.jsonl")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary["heldout"], indent=1))


if __name__ == "__main__":
    cli.run(main)
