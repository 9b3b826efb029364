"""GSM8K as the paper's FLAN-T5 runs: the 4-shot chain-of-thought prompt (`gsm8k_prompt`) +
"Q: <question>\\nA:" -> the dataset's reasoning with its calculator annotations "<<48/2=24>>"
removed, lines joined by spaces, and the final "#### N" written as "The answer is N." (the
exemplars' form). Scored by the accuracy of the final answer: the number after "The answer is",
else the last number before an invented next "Q:".
"""

from __future__ import annotations

import re

from gkd_jax.data import gsm8k_prompt
from gkd_jax.data.records import BadRecord, text_fields
from gkd_jax.evaluation import metrics

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
    question, answer = text_fields(rec, "question", "answer")
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


def gsm8k_accuracy(predictions: list[str], references: list) -> float:
    """References are canonical answers (`gsm8k_target`'s second value)."""
    return metrics.exact_match_accuracy([gsm8k_prediction(p) for p in predictions], references)
