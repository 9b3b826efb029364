"""The paper's three tasks (XSum, WMT14 en->de, GSM8K): records -> T5-style prompts and targets
-> token ids, and each task's metric.

Formatting follows the paper's T5 setup, one formatter per task for every source (TFDS, HF,
JSONL share field names):

* xsum: "summarize: " + document -> summary; ROUGE-2 (+ ROUGE-1/L/Lsum).
* wmt_en_de: "translate English to German: " + en -> de; corpus BLEU (sacrebleu).
* gsm8k: the 4-shot chain-of-thought prompt (`gsm8k_prompt`) + "Q: <question>\\nA:" -> the
  dataset's reasoning with its calculator annotations "<<48/2=24>>" removed, lines joined by
  spaces, and the final "#### N" written as "The answer is N." (the exemplars' form); accuracy
  of the final answer: the number after "The answer is", else the last number.

Prompts get the tokenizer's special tokens (T5 appends </s>); targets end with EOS and are cut
at `max_new_tokens` (counted). Bad records are reported with their location, as in `chat`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable, Iterable, Sequence

from gkd_jax import metrics
from gkd_jax.data import chat, gsm8k_prompt, sources

_CHUNK = 1024  # records tokenized per call: the fast tokenizer batches them in Rust

# An over-long prompt: a bad record, or keep its last / first max_prompt_len tokens. XSum's T5
# runs cut the document's end ("truncate_right", a trailing </s> kept: T5 appends EOS after
# trimming); few-shot GSM8K keeps the question ("truncate_left").
PROMPT_OVERFLOW = (*chat.PROMPT_OVERFLOW, "truncate_right")


@dataclasses.dataclass
class _Report(chat.DataReport):
    kept_end: str = "last"  # which end of an over-long prompt survives

    def headline(self) -> str:
        return super().headline().replace("to their last", f"to their {self.kept_end}")


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _text_fields(rec: object, *names: str) -> list[str]:
    if not isinstance(rec, dict):
        raise BadRecord("record is not a JSON object", type(rec).__name__)
    values = []
    for name in names:
        if name not in rec or rec[name] is None:
            raise BadRecord(f"missing field {name!r}", f"has: {', '.join(map(repr, rec))}")
        if not isinstance(rec[name], str):
            raise BadRecord(f"field {name!r} is not a string", type(rec[name]).__name__)
        if not rec[name].strip():
            raise BadRecord(f"empty field {name!r}")
        values.append(rec[name])
    return values


# Record -> (prompt text, target text, reference for the metric).
def format_xsum(rec: object) -> tuple[str, str, str]:
    document, summary = _text_fields(rec, "document", "summary")
    return "summarize: " + document, summary, summary


def format_wmt_en_de(rec: object) -> tuple[str, str, str]:
    # Hugging Face's wmt14 nests the pair: {"translation": {"de": ..., "en": ...}}.
    if isinstance(rec, dict) and isinstance(rec.get("translation"), dict):
        rec = rec["translation"]
    en, de = _text_fields(rec, "en", "de")
    return "translate English to German: " + en, de, de


_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_target(answer: str) -> tuple[str, str]:
    """(target text, canonical final answer) of a GSM8K solution "...<<a=b>>b...\\n#### N"."""
    reasoning, sep, final = answer.rpartition("####")
    number = metrics.normalize_number(final) if sep else None
    if number is None:
        raise BadRecord("answer does not end with '#### N'", repr(answer[-40:]))
    steps = [" ".join(line.split()) for line in _CALCULATOR.sub("", reasoning).splitlines()]
    text = " ".join(s for s in steps if s)
    return f"{text} The answer is {final.strip()}.".lstrip(), number


def format_gsm8k(rec: object) -> tuple[str, str, str]:
    question, answer = _text_fields(rec, "question", "answer")
    target, number = gsm8k_target(answer)
    return gsm8k_prompt.few_shot_prompt(question), target, number


_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def gsm8k_prediction(completion: str) -> str | None:
    """The final answer of a completion: the number after the first "The answer is", else the
    last number before the model starts inventing a next exemplar ("Q:")."""
    match = _ANSWER_IS.search(completion)
    if match:
        # The same rule as the dataset's "#### N": the first number after the marker.
        return metrics.gsm8k_answer("####" + completion[match.end() :].replace("####", " "))
    return metrics.gsm8k_answer(completion.split("Q:", 1)[0])


@functools.lru_cache(maxsize=1)
def _rouge(predictions: tuple[str, ...], references: tuple[str, ...]) -> dict[str, float]:
    # An evaluation asks for rouge2 and then the extra ROUGEs of the same texts: score once.
    return metrics.rouge(predictions, references)


def xsum_rouge2(predictions: list[str], references: list) -> float:
    return _rouge(tuple(predictions), tuple(references))["rouge2"]


def xsum_extra_rouge(predictions: list[str], references: list) -> dict[str, float]:
    scores = _rouge(tuple(predictions), tuple(references))
    return {k: scores[k] for k in ("rouge1", "rougeL", "rougeLsum")}


def wmt_bleu(predictions: list[str], references: list) -> float:
    return metrics.bleu(predictions, references)


def gsm8k_accuracy(predictions: list[str], references: list) -> float:
    """References are canonical answers (`gsm8k_target`'s second value)."""
    return metrics.exact_match_accuracy([gsm8k_prediction(p) for p in predictions], references)


@dataclasses.dataclass(frozen=True)
class PaperDataset:
    task: str
    tfds_name: str
    hf_name: str  # "NAME[:CONFIG]" for datasets.load_dataset
    eval_split: str  # when config.data.eval_split is ""
    format: Callable[[object], tuple[str, str, str]]


DATASETS = {
    "xsum": PaperDataset("xsum", "xsum", "EdinburghNLP/xsum", "validation", format_xsum),
    "wmt_en_de": PaperDataset(
        "wmt_en_de", "wmt14_translate/de-en", "wmt/wmt14:de-en", "validation", format_wmt_en_de
    ),
    # GSM8K has no validation split.
    "gsm8k": PaperDataset("gsm8k", "gsm8k", "openai/gsm8k:main", "test", format_gsm8k),
}


def check_config(config) -> None:
    """The data fields' combination (run by `validate_config`, before any model is loaded)."""
    d = config.data
    source = d.source or "tfds"
    if source not in sources.SOURCES:
        raise ValueError(
            f"config.data.source={d.source!r} is invalid: must be one of "
            f"{['', *sources.SOURCES]} ('' = tfds)"
        )
    for field in ("train_file", "eval_file"):
        if source == "jsonl" and not d[field]:
            raise ValueError(
                f"config.data.{field} is empty: config.data.source='jsonl' reads the "
                f"{field[:-5]} split from it (JSONL records with the dataset's field names)"
            )
        if source != "jsonl" and d[field]:
            raise ValueError(
                f"config.data.{field}={d[field]!r} is set but config.data.source={source!r} "
                "does not read it: set config.data.source='jsonl', or clear the field"
            )


def records(spec: PaperDataset, config, which: str) -> tuple[str, sources.Records]:
    """(description, records) of the train or eval split per config.data."""
    check_config(config)
    d = config.data
    source = d.source or "tfds"
    split = d.train_split if which == "train" else d.eval_split or spec.eval_split
    if source == "jsonl":
        path = d.train_file if which == "train" else d.eval_file
        return path, sources.jsonl_records(path)
    if source == "tfds":
        name = d.dataset or spec.tfds_name
        return f"tfds {name}[{split}]", sources.tfds_records(name, split, d.data_dir)
    name = d.dataset or spec.hf_name
    return f"hf {name}[{split}]", sources.hf_records(name, split)


def tokenize_records(
    recs: Iterable[tuple[str, object]],
    format_record: Callable[[object], tuple[str, str, str]],
    tokenizer,
    *,
    source: str,
    limit: int,
    max_prompt_len: int,
    max_completion_len: int,
    stop_ids: Sequence[int],
    prompt_overflow: str = "error",
) -> tuple[list[tuple[list[int], list[int], str, str]], chat.DataReport]:
    """Up to `limit` (prompt ids, completion ids, reference, prompt text), and the report."""
    if prompt_overflow not in PROMPT_OVERFLOW:
        raise ValueError(f"prompt_overflow={prompt_overflow!r}: choose one of {PROMPT_OVERFLOW}")
    stops, eos = set(stop_ids), tokenizer.eos_token_id
    report = _Report(source=source, max_completion_len=max_completion_len)
    report.kept_end = "first" if prompt_overflow == "truncate_right" else "last"
    specials = set(tokenizer.all_special_ids)
    examples = []
    recs = iter(recs)
    # Never read (or tokenize) far past `limit`: a cap of 500 eval examples reads ~500 records.
    while len(examples) < limit and (
        chunk := list(itertools.islice(recs, min(_CHUNK, limit - len(examples))))
    ):
        formatted = []
        for loc, rec in chunk:
            report.read += 1
            try:
                if isinstance(rec, Exception):
                    raise BadRecord("malformed JSON", str(rec))
                formatted.append((loc, *format_record(rec)))
            except BadRecord as e:
                report.problems.setdefault(e.reason, []).append(
                    f"{loc} ({e.detail})" if e.detail else loc
                )
        if not formatted:
            continue
        locs, prompts, targets, refs = zip(*formatted, strict=True)
        p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        t_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        for loc, prompt, p, t, ref in zip(locs, prompts, p_ids, t_ids, refs, strict=True):
            if len(p) > max_prompt_len and prompt_overflow != "error":
                if prompt_overflow == "truncate_left":
                    p = p[-max_prompt_len:]
                elif p[-1] in specials:  # the tokenizer's closing </s> ends the prompt still
                    p = [*p[: max_prompt_len - 1], p[-1]]
                else:
                    p = p[:max_prompt_len]
                report.truncated_prompts += 1
            if len(p) > max_prompt_len:
                reason = f"prompt longer than max_prompt_len={max_prompt_len} tokens"
                report.problems.setdefault(reason, []).append(f"{loc} (got {len(p)})")
                continue
            c = t if t and t[-1] in stops else [*t, eos]
            if len(c) > max_completion_len:
                c = c[:max_completion_len]
                report.truncated_completions += 1
            if len(examples) < limit:
                examples.append((p, c, ref, prompt))
    report.kept = len(examples)
    return examples, report


def load(name: str, config, tokenizer, stop_ids: Sequence[int], log=print):
    """(train Split, eval Split) of paper task `name`, per config.data (see `records`)."""
    from gkd_jax.data.tasks import Split  # tasks imports this module

    spec, d = DATASETS[name], config.data
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id")
    splits = []
    for which, limit in (("train", d.train_examples), ("eval", config.eval.num_examples)):
        where, recs = records(spec, config, which)
        examples, report = tokenize_records(
            recs,
            spec.format,
            tokenizer,
            source=where,
            limit=limit,
            max_prompt_len=d.max_prompt_len,
            max_completion_len=config.max_new_tokens,
            stop_ids=stop_ids,
            prompt_overflow=d.prompt_overflow,
        )
        if report.read == 0:
            raise ValueError(f"no records in {where} (empty file or split)")
        log(report.headline() if d.strict else report.summary())
        if report.problems and d.strict:
            head = f"{report.bad} of {report.read} records read from {where} are bad"
            head += " (fix them, or set config.data.strict=False to skip them):"
            raise ValueError("\n".join([head, *report.problem_lines()]))
        if not examples:
            raise ValueError(
                "\n".join([f"no usable examples in {where}:", *report.problem_lines()])
            )
        p, c, refs, prompts = map(list, zip(*examples, strict=True))
        splits.append(Split(p, c, refs, prompts))
    return splits[0], splits[1]
