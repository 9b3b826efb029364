"""The paper's tasks (XSum, WMT14 en->de, GSM8K, and FLAN 2021 for instruction tuning): records
from TFDS, Hugging Face or JSONL (`sources`) -> T5-style prompt and completion texts (one formatter
per task: `xsum`, `wmt`, `gsm8k`, `flan`, the same field names for every source) -> token ids.

Prompts get the tokenizer's special tokens (T5 appends </s>); completions end with EOS and are cut
at `max_new_tokens` (counted). Bad records are reported with their location (`records`).
"""

from __future__ import annotations

import array
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence

from gkd_jax.data import flan, gsm8k, sources, wmt, xsum
from gkd_jax.data.records import PROMPT_OVERFLOW as KEEP_LAST_OR_FAIL
from gkd_jax.data.records import BadRecord, DataReport
from gkd_jax.data.task_types import Split

_CHUNK = 1024  # records tokenized per call: the fast tokenizer batches them in Rust

# An over-long prompt: a bad record, or keep its last / first max_prompt_len tokens. XSum's T5
# runs cut the document's end ("truncate_right", a trailing </s> kept: T5 appends EOS after
# trimming); few-shot GSM8K keeps the question ("truncate_left").
PROMPT_OVERFLOW = (*KEEP_LAST_OR_FAIL, "truncate_right")


FLAN2021_HF = "DataProvenanceInitiative/flan2021_submix_original"  # {"inputs", "targets", ...}
FLAN2021_EVAL_ROWS = 2_000


@dataclasses.dataclass(frozen=True)
class PaperDataset:
    task: str
    tfds_name: str  # "": none (source "hf" or "jsonl" only)
    hf_name: str  # "NAME[:CONFIG]" for datasets.load_dataset
    eval_split: str  # when config.data.eval_split is ""
    format: Callable[[object], tuple[str, str, str]]


DATASETS = {
    "xsum": PaperDataset("xsum", "xsum", "EdinburghNLP/xsum", "validation", xsum.format_xsum),
    "wmt_en_de": PaperDataset(
        "wmt_en_de", "wmt14_translate/de-en", "wmt/wmt14:de-en", "validation", wmt.format_wmt_en_de
    ),
    # GSM8K has no validation split.
    "gsm8k": PaperDataset("gsm8k", "gsm8k", "openai/gsm8k:main", "test", gsm8k.format_gsm8k),
    # FLAN 2021 (instruction tuning): no TFDS copy; the Flan Collection's FLAN 2021 submix on
    # the hub has one split, so its last 2,000 rows are the eval split (configs/flan2021.py
    # trains on the rest).
    "flan2021": PaperDataset(
        "flan2021", "", FLAN2021_HF, f"train[-{FLAN2021_EVAL_ROWS}:]", flan.format_flan
    ),
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
    spec = DATASETS.get(config.task)
    if source == "tfds" and spec is not None and not spec.tfds_name and not d.dataset:
        raise ValueError(
            f"task {config.task!r} has no TFDS dataset: set config.data.source='hf' (default "
            f"{spec.hf_name}) or 'jsonl'"
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
) -> tuple[list[tuple[array.array, array.array, str, str]], DataReport]:
    """Up to `limit` (prompt ids, completion ids, reference, prompt text), and the report."""
    if prompt_overflow not in PROMPT_OVERFLOW:
        raise ValueError(f"prompt_overflow={prompt_overflow!r}: choose one of {PROMPT_OVERFLOW}")
    stops, eos = set(stop_ids), tokenizer.eos_token_id
    kept_end = "first" if prompt_overflow == "truncate_right" else "last"
    report = DataReport(source=source, max_completion_len=max_completion_len, kept_end=kept_end)
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
                report.add_problem(loc, e.reason, e.detail)
        if not formatted:
            continue
        locs, prompts, completions, refs = zip(*formatted, strict=True)
        p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        for loc, prompt, p, t, ref in zip(locs, prompts, p_ids, c_ids, refs, strict=True):
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
                report.add_problem(loc, reason, f"got {len(p)}")
                continue
            c = t if t and t[-1] in stops else [*t, eos]
            if len(c) > max_completion_len:
                c = c[:max_completion_len]
                report.truncated_completions += 1
            if len(examples) < limit:
                # int32 arrays: ~4 bytes a token where a list of ints takes ~40 (XSum's
                # 204k training prompts: ~0.5 GB instead of ~4.5 GB).
                examples.append((array.array("i", p), array.array("i", c), ref, prompt))
    report.kept = len(examples)
    return examples, report


def load(name: str, config, tokenizer, stop_ids: Sequence[int], log=print):
    """(train Split, eval Split) of paper task `name`, per config.data (see `records`)."""
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
