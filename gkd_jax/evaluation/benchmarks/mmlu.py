"""MMLU (Hendrycks et al., 2021): 57 subjects of four-way multiple choice, k-shot with the dev
split's first k questions as exemplars, scored by log-likelihood.

Prompt (lm-eval-harness's `mmlu` and HELM's, the original code's format with one space in the
header where its `format_subject` left two):

    The following are multiple choice questions (with answers) about high school physics.

    <question>
    A. <choice>
    B. <choice>
    C. <choice>
    D. <choice>
    Answer: B

    ... (k exemplars, each followed by a blank line) ...
    <question>
    A. ...
    Answer:

The prediction is the letter among " A", " B", " C", " D" whose continuation has the highest
log-probability (the original code's, lm-eval-harness's `acc` and HELM's choice): the letters
are what the prompt teaches the model to answer, they are single tokens for common tokenizers
(one forward per question), and scoring the choice texts instead would compare sequences of
different lengths. Reported: accuracy per subject, micro (over all questions) and macro (the
mean of the subjects') averages.

Data, either layout, read from local files:
  * the original release (people.eecs.berkeley.edu/~hendrycks/data.tar): DIR/dev/S_dev.csv and
    DIR/test/S_test.csv, no header, rows `question, A, B, C, D, answer letter`;
  * Hugging Face `cais/mmlu`: a `save_to_disk` DatasetDict directory, or a snapshot of the
    hub repo (DIR/SUBJECT/{dev,test}-*.parquet, or DIR/all/...), columns `question`,
    `subject`, `choices` (4 strings), `answer` (0-3).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import os
from collections.abc import Callable, Iterable

import numpy as np

from gkd_jax.evaluation.benchmarks.likelihood import Scorer, encode_request

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "test")  # exemplars, evaluation


@dataclasses.dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]  # the four options, in A..D order
    answer: str  # "A" | "B" | "C" | "D"


Subjects = dict[str, list[Question]]  # subject (file name stem, e.g. "high_school_physics")


def header(subject: str) -> str:
    return (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )


def format_question(q: Question, with_answer: bool) -> str:
    text = q.question.strip()
    text += "".join(
        f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True)
    )
    return text + (f"\nAnswer: {q.answer}" if with_answer else "\nAnswer:")


def few_shot_prompt(subject: str, shots: Iterable[Question], q: Question) -> str:
    """The header, the exemplars with their answers, then `q` up to "Answer:"."""
    exemplars = "".join(format_question(s, True) + "\n\n" for s in shots)
    return header(subject) + exemplars + format_question(q, False)


# ------------------------------------------------------------------------------- reading
def load(data_dir: str) -> tuple[Subjects, Subjects]:
    """(dev, test) questions per subject, from either layout (module docstring)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir}: no such directory (MMLU data)")
    if os.path.isdir(os.path.join(data_dir, "test")) and glob.glob(
        os.path.join(data_dir, "test", "*_test.csv")
    ):
        return read_csv_split(data_dir, "dev"), read_csv_split(data_dir, "test")
    if os.path.exists(os.path.join(data_dir, "dataset_dict.json")):
        return read_saved(data_dir)
    if glob.glob(os.path.join(data_dir, "*", "test-*.parquet")):
        return read_parquet(data_dir)
    raise FileNotFoundError(
        f"--data_dir={data_dir} holds no MMLU data: expected the original layout "
        "(test/SUBJECT_test.csv + dev/SUBJECT_dev.csv), a `save_to_disk` copy of cais/mmlu "
        "(dataset_dict.json), or a snapshot of the cais/mmlu repo (SUBJECT/test-*.parquet)"
    )


def read_csv_split(data_dir: str, split: str) -> Subjects:
    """DIR/SPLIT/SUBJECT_SPLIT.csv files; a row is question, A, B, C, D, answer letter."""
    subjects: Subjects = {}
    suffix = f"_{split}.csv"
    for path in sorted(glob.glob(os.path.join(data_dir, split, f"*{suffix}"))):
        subject = os.path.basename(path)[: -len(suffix)]
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        subjects[subject] = [csv_question(row, f"{path}:{i + 1}") for i, row in enumerate(rows)]
    return subjects


def csv_question(row: list[str], where: str) -> Question:
    if len(row) != 6 or row[5].strip() not in LETTERS:
        raise ValueError(
            f"{where}: expected 6 columns (question, A, B, C, D, answer letter A-D), got {row!r}"
        )
    return Question(row[0], tuple(row[1:5]), row[5].strip())


def hf_question(rec: dict, where: str) -> Question:
    choices, answer = rec["choices"], rec["answer"]
    if len(choices) != 4 or answer not in range(4):
        raise ValueError(f"{where}: expected 4 choices and an answer 0-3, got {rec!r}")
    return Question(rec["question"], tuple(choices), LETTERS[answer])


def group(rows: Iterable[dict], where: str, subject: str | None = None) -> Subjects:
    subjects: Subjects = collections.defaultdict(list)
    for i, rec in enumerate(rows):
        name = rec.get("subject") or subject
        subjects[name].append(hf_question(rec, f"{where}#{i}"))
    return dict(sorted(subjects.items()))


def read_saved(data_dir: str) -> tuple[Subjects, Subjects]:
    """A `datasets.save_to_disk` DatasetDict with "dev" and "test" splits."""
    import datasets

    ds = datasets.load_from_disk(data_dir)
    missing = [s for s in SPLITS if s not in ds]
    if missing:
        raise ValueError(f"{data_dir}: no {missing} split(s) (has: {', '.join(ds.keys())})")
    dev, test = (group(ds[s], f"{data_dir}[{s}]") for s in SPLITS)
    return dev, test


def read_parquet(data_dir: str) -> tuple[Subjects, Subjects]:
    """A snapshot of the cais/mmlu repo: one folder per subject (or `all`), parquet per split."""
    import pyarrow.parquet as pq

    folders = ["all"] if os.path.isdir(os.path.join(data_dir, "all")) else None
    if folders is None:
        tests = glob.glob(os.path.join(data_dir, "*", "test-*.parquet"))
        folders = sorted({os.path.basename(os.path.dirname(p)) for p in tests})
    splits = []
    for split in SPLITS:
        subjects: Subjects = {}
        for folder in folders:
            for path in sorted(glob.glob(os.path.join(data_dir, folder, f"{split}-*.parquet"))):
                rows = pq.read_table(path).to_pylist()
                for name, qs in group(rows, path, subject=folder).items():
                    subjects.setdefault(name, []).extend(qs)
        splits.append(dict(sorted(subjects.items())))
    return splits[0], splits[1]


# ------------------------------------------------------------------------------- scoring
def evaluate(
    scorer: Scorer,
    tokenizer,
    data_dir: str,
    *,
    shots: int = 5,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, list[dict]]:
    """(summary, one row per question) of the k-shot evaluation of the test split; `limit`
    caps the questions per subject (a quick look, not a reportable number)."""
    dev, test = load(data_dir)
    if not test:
        raise ValueError(f"--data_dir={data_dir}: no test questions found")
    if not 0 <= shots <= 5:
        raise ValueError(f"--shots={shots}: MMLU has 5 dev questions per subject (0-5 shots)")
    items = []
    for subject, questions in test.items():
        exemplars = dev.get(subject, [])[:shots]
        if len(exemplars) < shots:
            raise ValueError(
                f"MMLU subject {subject!r}: {shots} shots asked, the dev split has "
                f"{len(exemplars)} (dev/{subject}_dev.csv)"
            )
        items += [(subject, i, q, exemplars) for i, q in enumerate(questions[:limit])]
    log(f"[mmlu] {len(items)} questions in {len(test)} subjects, {shots}-shot")
    requests = [
        encode_request(tokenizer, few_shot_prompt(s, ex, q), [" " + a for a in LETTERS])
        for s, _, q, ex in items
    ]
    logprobs = scorer(requests)
    rows = []
    for (subject, i, q, _), lp in zip(items, logprobs, strict=True):
        pred = LETTERS[int(np.argmax(lp))]
        rows.append(
            dict(
                subject=subject,
                index=i,
                question=q.question,
                answer=q.answer,
                prediction=pred,
                correct=pred == q.answer,
                logprobs=[float(x) for x in lp],
            )
        )
    return summarize(rows, shots, scorer.truncated), rows


def summarize(rows: list[dict], shots: int, truncated: int) -> dict:
    by_subject: dict[str, list[bool]] = collections.defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r["correct"])
    per_subject = {s: float(np.mean(c)) for s, c in sorted(by_subject.items())}
    return {
        "benchmark": "mmlu",
        "shots": shots,
        "examples": len(rows),
        "metrics": {
            "accuracy_micro": float(np.mean([r["correct"] for r in rows])),
            "accuracy_macro": float(np.mean(list(per_subject.values()))),
        },
        "per_subject": per_subject,
        "examples_per_subject": {s: len(c) for s, c in sorted(by_subject.items())},
        "truncated_prompts": truncated,
    }
