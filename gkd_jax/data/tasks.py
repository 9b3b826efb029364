"""Task registry: each task's loader and metric by name (`get_task`); `Task` and `Split` are in
task_types.py."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gkd_jax.data import arith, chat, flan, gsm8k, paper_tasks, wmt, xsum
from gkd_jax.data.task_types import Split, Task
from gkd_jax.evaluation.metrics import exact_match_accuracy


def _arith_split(tokenizer, examples: Sequence[arith.Example]) -> Split:
    eos = tokenizer.eos_token_id
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    completions = [[*c, eos] for c in c_ids]
    return Split(prompts, completions, [e.answer for e in examples], [e.prompt for e in examples])


def load_arith(config, tokenizer, stop_ids, log=print) -> tuple[Split, Split]:
    del stop_ids, log
    seed = config.seed if config.data.train_seed == -1 else config.data.train_seed
    train = arith.make_examples("train", config.data.train_examples, seed)
    test = arith.make_examples("test", config.eval.num_examples, config.data.eval_seed)
    return _arith_split(tokenizer, train), _arith_split(tokenizer, test)


def arith_accuracy(completions: list[str], answers: list) -> float:
    return exact_match_accuracy([arith.extract_answer(c) for c in completions], answers)


def load_chat(config, tokenizer, stop_ids, log=print) -> tuple[Split, Split]:
    """`config.data.train_file` (+ `eval_file`, else its last `eval.num_examples` records)."""
    d = config.data
    if not d.train_file:
        raise ValueError("config.data.train_file is empty: the chat task needs a data file")
    kw = dict(
        max_prompt_len=d.max_prompt_len,
        max_completion_len=config.max_new_tokens,
        stop_ids=stop_ids,
        strict=d.strict,
        prompt_overflow=d.prompt_overflow,
        log=log,
    )
    train, _ = chat.load_examples(d.train_file, tokenizer, split=d.train_split, **kw)
    if d.eval_file:
        split = d.eval_split or "validation"
        evals, _ = chat.load_examples(d.eval_file, tokenizer, split=split, **kw)
        evals = evals[: config.eval.num_examples]
    else:
        k = config.eval.num_examples
        if len(train) <= k:
            raise ValueError(
                f"{d.train_file}: {len(train)} examples cannot spare eval.num_examples={k} for "
                "evaluation; set config.data.eval_file or lower config.eval.num_examples"
            )
        train, evals = train[:-k], train[-k:]

    def split(examples):
        answers = [e.answer for e in examples]
        has = any(a is not None for a in answers)  # answer_accuracy only where some row has one
        return Split(
            [e.prompt_ids for e in examples],
            [e.completion_ids for e in examples],
            [e.reference for e in examples],
            [tokenizer.decode(e.prompt_ids) for e in examples],
            answers=answers if has else None,
            families=[e.family for e in examples] if has else None,
        )

    return split(train), split(evals)


TASKS: dict[str, Task] = {
    "arith": Task("arith", load_arith, "accuracy", arith_accuracy),
    "chat": Task("chat", load_chat, "on_policy_jsd", None, higher_is_better=False),
    # The paper's tasks (data/paper_tasks.py): TFDS by default, or config.data.source hf / jsonl.
    "xsum": Task(
        "xsum",
        functools.partial(paper_tasks.load, "xsum"),
        "rouge2",
        xsum.xsum_rouge2,
        extra_metrics=xsum.xsum_extra_rouge,
    ),
    "wmt_en_de": Task(
        "wmt_en_de", functools.partial(paper_tasks.load, "wmt_en_de"), "bleu", wmt.wmt_bleu
    ),
    "gsm8k": Task(
        "gsm8k",
        functools.partial(paper_tasks.load, "gsm8k"),
        "accuracy",
        gsm8k.gsm8k_accuracy,
    ),
    # Instruction tuning: exact match on held-out FLAN prompts while training; the paper's
    # MMLU / BBH come from `python -m gkd_jax.evaluate --benchmark=...`
    # (gkd_jax/evaluation/benchmarks).
    "flan2021": Task(
        "flan2021",
        functools.partial(paper_tasks.load, "flan2021"),
        "exact_match",
        flan.flan_exact_match,
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
