"""BIG-Bench Hard (Suzgun et al., 2022): 23 (27 with subtasks) hard BIG-Bench tasks, 3-shot
from the paper's own prompt files, greedy decoding, exact match of the extracted answer.

Data, read from a local copy of the release (github.com/suzgunmirac/BIG-Bench-Hard):
DIR/bbh/TASK.json ({"examples": [{"input", "target"}, ...]}) and DIR/cot-prompts/TASK.txt
(a canary line and "-----", then the task description and three "Q: ...\\nA: ..." exemplars
separated by blank lines, their answers ending "So the answer is X.").

Prompts, as in the paper (and open-instruct's / lm-eval-harness's bbh tasks):
  * "cot" (default): the file's description and exemplars, then "Q: <input>\\nA: Let's think
    step by step." The answer is what follows the first "the answer is", to the end of its
    sentence (a period then a space or the end) or line.
  * "direct" (answer-only): the same exemplars with each answer cut to X (the release ships
    CoT prompts only; answer-only prompts are derived from them, as open-instruct does), then
    "Q: <input>\\nA:". The answer is the completion's first line, a final period dropped.
A completion is cut where the model starts a next "Q:" (stop tokens end it earlier). Reported:
exact-match accuracy per task, and its macro (mean over tasks, BBH's headline number) and micro
averages.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.evaluation.benchmarks.batching import bucket, fill_rows, left_pad, length_batches
from gkd_jax.models.lm import LMFunctions

PROMPTS = ("cot", "direct")
MAX_NEW_TOKENS = {"cot": 256, "direct": 32}  # a CoT answer is a paragraph, a direct one a word
COT_START = "Let's think step by step."
# The answer runs to its sentence's end: a period before a space or the text's end (not the
# period of "3.5"), or the line's end.
_ANSWER_IS = re.compile(r"the answer is (.*?)(?=\.\s|\.$|\n|$)", re.IGNORECASE)
_NEXT_QUESTION = re.compile(r"\n\s*Q:")


def read_prompt_file(path: str) -> tuple[str, list[tuple[str, str]]]:
    """(task description, [(question, answer)]) of a cot-prompts/TASK.txt file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, sep, body = text.partition("\n-----\n")  # the canary header, when the file has one
    blocks = re.split(r"\n\n(?=Q: )", (body if sep else head).strip())
    description = "" if blocks[0].startswith("Q: ") else blocks.pop(0).strip()
    exemplars = []
    for block in blocks:
        question, sep, answer = block.partition("\nA:")
        if not sep:
            raise ValueError(f"{path}: an exemplar without an 'A:' line: {block[:80]!r}")
        exemplars.append((question.removeprefix("Q: ").strip(), answer.strip()))
    return description, exemplars


def answer_only(cot_answer: str) -> str:
    """X of a chain of thought that ends "So the answer is X."."""
    match = _ANSWER_IS.search(cot_answer)
    if not match:
        raise ValueError(f"a CoT exemplar without 'the answer is': {cot_answer[-80:]!r}")
    return drop_period(match.group(1).strip())


def drop_period(text: str) -> str:
    return text[:-1].rstrip() if text.endswith(".") else text


def build_prompt(description: str, exemplars, question: str, prompt: str, shots: int) -> str:
    """The description, `shots` exemplars (CoT or answer-only), then the question."""
    parts = [description] if description else []
    for q, a in exemplars[:shots]:
        parts.append(f"Q: {q}\nA: {a if prompt == 'cot' else answer_only(a)}")
    ending = f" {COT_START}" if prompt == "cot" else ""
    parts.append(f"Q: {question}\nA:{ending}")
    return "\n\n".join(parts)


def extract_answer(completion: str, prompt: str) -> str:
    """The answer a completion gives (module docstring), to compare with the target."""
    text = _NEXT_QUESTION.split(completion, maxsplit=1)[0]
    if prompt == "cot":
        match = _ANSWER_IS.search(text)
        text = match.group(1) if match else text
    else:
        text = text.strip().split("\n", 1)[0] if text.strip() else ""
    return drop_period(text.strip())


def load(data_dir: str) -> dict[str, tuple[list[dict], str]]:
    """{task: (examples, path of its prompt file)} of DIR/bbh/*.json + DIR/cot-prompts/."""
    paths = sorted(glob.glob(os.path.join(data_dir, "bbh", "*.json")))
    if not paths:
        raise FileNotFoundError(
            f"--data_dir={data_dir}: no bbh/TASK.json files (the BIG-Bench-Hard release's "
            "layout: bbh/TASK.json and cot-prompts/TASK.txt)"
        )
    tasks = {}
    for path in paths:
        task = os.path.splitext(os.path.basename(path))[0]
        prompt_file = os.path.join(data_dir, "cot-prompts", f"{task}.txt")
        if not os.path.exists(prompt_file):
            raise FileNotFoundError(f"{path} has no prompt file {prompt_file}")
        with open(path, encoding="utf-8") as f:
            examples = json.load(f)["examples"]
        tasks[task] = (examples, prompt_file)
    return tasks


def generate_greedy(
    params,
    fns: LMFunctions,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    batch_size: int,
    vocab_size: int = 0,
    log: Callable[[str], None] = print,
    progress_every: float = 30.0,
) -> list[list[int]]:
    """Greedy completions (token ids, the stop token dropped) of `prompts`, in their order,
    among the first `vocab_size` ids (0: all; a checkpoint's embedding rows past its tokenizer
    are never real tokens)."""
    cfg = SamplingConfig(
        max_new_tokens, 0.0, stop_ids=tuple(stop_ids), pad_id=pad_id, vocab_size=vocab_size
    )
    sampler = make_sampler(fns.decoding, cfg)
    out: list = [None] * len(prompts)
    stops, start, last, done = set(stop_ids), time.time(), time.time(), 0
    for idx in length_batches([len(p) for p in prompts], batch_size):
        rows = fill_rows(idx, batch_size)
        p, pm = left_pad([prompts[i] for i in rows], bucket(len(prompts[idx[0]])), pad_id)
        result = sampler(params, p, pm, jax.random.key(0))  # greedy: the key is unused
        tokens, mask = np.asarray(result.tokens), np.asarray(result.mask)
        for j, i in enumerate(idx):
            out[i] = [int(t) for t in tokens[j][mask[j]] if int(t) not in stops]
        done += len(idx)
        if time.time() - last > progress_every or done == len(prompts):
            last = time.time()
            log(f"[benchmark] {done}/{len(prompts)} prompts decoded ({last - start:.1f}s)")
    return out


def evaluate(
    params,
    fns: LMFunctions,
    tokenizer,
    data_dir: str,
    *,
    stop_ids: Sequence[int],
    shots: int = 3,
    prompt: str = "cot",
    limit: int | None = None,
    batch_size: int = 16,
    max_prompt_len: int = 2048,
    max_new_tokens: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, list[dict]]:
    """(summary, one row per example); `limit` caps the examples per task."""
    if prompt not in PROMPTS:
        raise ValueError(f"--bbh_prompt={prompt!r}: choose one of {PROMPTS}")
    items = []
    for task, (examples, prompt_file) in load(data_dir).items():
        description, exemplars = read_prompt_file(prompt_file)
        if not 0 <= shots <= len(exemplars):
            raise ValueError(f"--shots={shots}: {prompt_file} has {len(exemplars)} exemplars")
        for i, ex in enumerate(examples[:limit]):
            items.append(
                (task, i, ex, build_prompt(description, exemplars, ex["input"], prompt, shots))
            )
    log(
        f"[bbh] {len(items)} examples in {len({t for t, *_ in items})} tasks, {shots}-shot {prompt}"
    )
    ids = tokenizer([text for *_, text in items], add_special_tokens=True)["input_ids"]
    truncated = sum(len(x) > max_prompt_len for x in ids)
    ids = [x[-max_prompt_len:] for x in ids]  # keep the question, as MMLU's left truncation
    completions = generate_greedy(
        params,
        fns,
        ids,
        max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[prompt],
        stop_ids=stop_ids,
        pad_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        vocab_size=min(fns.vocab_size, len(tokenizer)),
        log=log,
    )
    rows = []
    for (task, i, ex, _), c in zip(items, completions, strict=True):
        text = tokenizer.decode(c, skip_special_tokens=True)
        pred = extract_answer(text, prompt)
        rows.append(
            dict(
                task=task,
                index=i,
                input=ex["input"],
                target=ex["target"],
                completion=text,
                prediction=pred,
                correct=pred == ex["target"].strip(),
            )
        )
    return summarize(rows, shots, prompt, truncated), rows


def summarize(rows: list[dict], shots: int, prompt: str, truncated: int) -> dict:
    by_task: dict[str, list[bool]] = collections.defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r["correct"])
    per_task = {t: float(np.mean(c)) for t, c in sorted(by_task.items())}
    return {
        "benchmark": "bbh",
        "shots": shots,
        "prompt": prompt,
        "examples": len(rows),
        "metrics": {
            "exact_match_macro": float(np.mean(list(per_task.values()))),
            "exact_match_micro": float(np.mean([r["correct"] for r in rows])),
        },
        "per_task": per_task,
        "examples_per_task": {t: len(c) for t, c in sorted(by_task.items())},
        "truncated_prompts": truncated,
    }
