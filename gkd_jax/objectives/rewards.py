"""Rewards for RL on the student's own samples: a registry of pure functions, chosen by name.

A reward is a pure function

    reward(prompts: list[str], completions: list[str], references: list) -> np.ndarray

returning one finite float32 per completion (shape [B]). `references[i]` is whatever the task
scores completion `i` against: an int answer (arith), a canonical answer string (GSM8K), a
reference text (XSum, WMT). A reward never raises on bad data: an empty completion, a completion
with no answer, a None or NaN reference each get a defined reward (stated per reward below), so a
sample the student mangles halfway through a run costs a low reward, not the run. Malformed
*calls* (lists of different lengths) are programming errors and raise at once.

Rewards are chosen by name with `get_reward(spec)`: either a key of `REWARDS`

    exact_answer, gsm8k_answer, rouge2, bleu, length_penalty

or an import path "module:attribute" (e.g. "my_pkg.rewards:entailment"), so a reward that needs
its own model, like the GKD paper's textual-entailment reward on XSum, lives in the user's code
(or is added to the plain dict: `REWARDS["entailment"] = entailment`).
Parametrized rewards are built by factories (`length_penalty(target_chars, scale)`,
`sentence_bleu(tokenize)`); `combine(weights)` makes a weighted sum of rewards by name, e.g.
`combine({"exact_answer": 1.0, "length_penalty": 0.1})`.

Scoring reuses the evaluation code (`gkd_jax.evaluation.metrics`, the tasks' answer extraction), so
a reward
of 1.0 means exactly what the evaluation counts as correct.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gkd_jax.data import arith
from gkd_jax.data import gsm8k as gsm8k_data
from gkd_jax.evaluation import metrics

Reward = Callable[[Sequence[str], Sequence[str], Sequence[Any]], np.ndarray]


# --------------------------------------------------------------------------------- helpers


def _check_batch(prompts: Sequence, completions: Sequence, references: Sequence, name: str):
    # Different lengths mean the caller paired the wrong lists: fail loudly, before any scoring.
    if not (len(prompts) == len(completions) == len(references)):
        raise ValueError(
            f"reward {name}: {len(prompts)} prompts, {len(completions)} completions and "
            f"{len(references)} references; one prompt and one reference per completion"
        )


def _missing(value: Any) -> bool:
    """True for a reference that carries nothing to score against: None or a float NaN/inf
    (what pandas and JSON loaders put in an empty cell)."""
    if value is None:
        return True
    return isinstance(value, float | np.floating) and not math.isfinite(value)


def _text(value: Any) -> str:
    """A completion as text; a None (a sampler or detokenizer that gave nothing) is ""."""
    return "" if value is None else str(value)


def _as_int(value: Any) -> int | None:
    """An arith reference as an int: ints, integral floats and integer strings ("80", " -3");
    None for anything else, so a bad reference scores 0 instead of raising."""
    if _missing(value) or isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _result(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(len(values))


# ------------------------------------------------------------------------------- rewards


def exact_answer(
    prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
) -> np.ndarray:
    """arith: 1.0 if the integer after the completion's last "####" equals the reference, else 0.0.

    The answer is read by `arith.extract_answer`, the evaluation's own rule. 0.0 when there is no
    "####" or no integer after it (an empty completion included), and when the reference is None,
    NaN or not an integer (an integer string like "80" counts as 80).
    """
    _check_batch(prompts, completions, references, "exact_answer")
    return _answers_match(completions, references, _as_int, arith.extract_answer)


def gsm8k_answer(
    prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
) -> np.ndarray:
    """GSM8K: 1.0 if the completion's final answer equals the reference's, numerically, else 0.0.

    The completion's answer is `gsm8k.gsm8k_prediction` (the number after "The answer is", else
    the last number before an invented next "Q:"), the evaluation's rule; the reference may be the
    canonical answer ("72", 72) or a full solution ("... #### 72"), read by
    `metrics.gsm8k_answer`, so "1,000" == "1000" and "3.0" == "3". 0.0 when either side has no
    number (an empty completion included) or the reference is None/NaN.
    """
    _check_batch(prompts, completions, references, "gsm8k_answer")

    def gold(reference):
        return None if _missing(reference) else metrics.gsm8k_answer(str(reference))

    return _answers_match(completions, references, gold, gsm8k_data.gsm8k_prediction)


def _answers_match(completions, references, gold_of, answer_of) -> np.ndarray:
    """1.0 where the completion's answer (`answer_of(text)`) equals the reference's
    (`gold_of(reference)`), 0.0 where they differ or either is None."""
    out = []
    for completion, reference in zip(completions, references, strict=True):
        gold, answer = gold_of(reference), answer_of(_text(completion))
        out.append(1.0 if gold is not None and answer is not None and answer == gold else 0.0)
    return _result(out)


def rouge2(
    prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
) -> np.ndarray:
    """XSum: ROUGE-2 F1 of the completion against the reference text, in [0, 1].

    `metrics.rouge` (Google's rouge-score with the Porter stemmer, the paper's metric) divided by
    100. 0.0 for an empty completion (no bigrams), a one-word completion, and a None/NaN
    reference; a non-string reference is scored as its `str`.
    """
    _check_batch(prompts, completions, references, "rouge2")
    out = []
    for completion, reference in zip(completions, references, strict=True):
        if _missing(reference):
            out.append(0.0)
            continue
        score = metrics.rouge([_text(completion)], [str(reference)])["rouge2"] / 100.0
        out.append(min(max(score, 0.0), 1.0))
    return _result(out)


@functools.cache
def _bleu_scorer(tokenize: str):
    # Imported here, as in metrics.bleu: this module imports without sacrebleu. Built once per
    # tokenizer: sacrebleu.sentence_bleu would rebuild the tokenizer on every call.
    import sacrebleu

    return sacrebleu.BLEU(tokenize=tokenize, effective_order=True)


def _bleu(
    prompts: Sequence[str],
    completions: Sequence[str],
    references: Sequence[Any],
    tokenize: str,
) -> np.ndarray:
    _check_batch(prompts, completions, references, "bleu")
    scorer = _bleu_scorer(tokenize)
    out = []
    for completion, reference in zip(completions, references, strict=True):
        text = _text(completion)
        # sacrebleu already gives 0 for an empty hypothesis; checking here keeps the documented
        # value independent of its smoothing details.
        if _missing(reference) or not text.strip():
            out.append(0.0)
            continue
        score = scorer.sentence_score(text, [str(reference)]).score / 100.0
        out.append(min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0)
    return _result(out)


def bleu(
    prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
) -> np.ndarray:
    """WMT: sentence-level BLEU of the completion against the reference, in [0, 1].

    sacrebleu's sentence BLEU (as `sacrebleu.sentence_bleu`: 13a tokenization, exponential
    smoothing of zero n-gram counts, effective order, case-sensitive) divided by 100. Sentence
    BLEU is a per-sample signal; the evaluation's corpus BLEU (`metrics.bleu`) pools n-grams over
    the corpus and is not the mean of these. 0.0 for an empty completion and a None/NaN
    reference; a non-string reference is scored as its `str`. `sentence_bleu(tokenize)` builds
    the same reward with another tokenizer.
    """
    return _bleu(prompts, completions, references, "13a")


def sentence_bleu(tokenize: str) -> Reward:
    """The `bleu` reward with another sacrebleu tokenizer ("zh", "ja-mecab", "intl", ...)."""
    try:  # build the scorer now, so an unknown tokenizer fails at start-up, not mid-run
        _bleu_scorer(tokenize)
    except KeyError as e:  # sacrebleu's error for an unknown tokenizer is a bare KeyError
        raise ValueError(
            f"sentence_bleu: unknown sacrebleu tokenizer {tokenize!r}; e.g. '13a', 'intl', 'zh'"
        ) from e

    def reward(
        prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
    ) -> np.ndarray:
        return _bleu(prompts, completions, references, tokenize)

    reward.__doc__ = f"Sentence BLEU / 100 with sacrebleu's {tokenize!r} tokenizer (see `bleu`)."
    return reward


def length_penalty(target_chars: int, scale: float) -> Reward:
    """A reward `-scale * |len(completion) - target_chars| / target_chars` (length in characters).

    0 at exactly `target_chars`, -scale at an empty completion or one twice the target, linear in
    between and beyond; never positive, so add it to a task reward (see `combine`) to prefer
    answers near a length. A None completion counts as empty. References are not used.
    """
    if isinstance(target_chars, bool) or not isinstance(target_chars, int) or target_chars < 1:
        raise ValueError(f"length_penalty: target_chars must be an int >= 1, got {target_chars!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"length_penalty: scale must be finite and >= 0, got {scale!r}")

    def reward(
        prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
    ) -> np.ndarray:
        _check_batch(prompts, completions, references, "length_penalty")
        return _result(
            [-scale * abs(len(_text(c)) - target_chars) / target_chars for c in completions]
        )

    reward.__doc__ = (
        f"-{scale} * |len(completion) - {target_chars}| / {target_chars}, per completion."
    )
    return reward


# The registry. "length_penalty" by name is the factory's default: arith's target length with
# scale 1 (-1 per target length of deviation); build another with `length_penalty(...)`.
REWARDS: dict[str, Reward] = {
    "exact_answer": exact_answer,
    "gsm8k_answer": gsm8k_answer,
    "rouge2": rouge2,
    "bleu": bleu,
    "length_penalty": length_penalty(arith.TARGET_CHARS, 1.0),
}


# ------------------------------------------------------------------------------ by name


def get_reward(spec: str) -> Reward:
    """The reward named `spec`: a key of `REWARDS`, or an import path "module:attribute"
    ("my_pkg.rewards:entailment"; the attribute may be dotted, "module:Class.method").

    Raises ValueError, naming the spec and what to change, for an unknown name, a module that does
    not import, a missing attribute, or an attribute that is not callable. Resolve rewards once at
    start-up, so these errors come before anything compiles.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"reward spec must be a non-empty string, got {spec!r}: give one of "
            f"{sorted(REWARDS)} or an import path 'module:attribute'"
        )
    spec = spec.strip()
    if ":" not in spec:
        if spec in REWARDS:
            return REWARDS[spec]
        raise ValueError(
            f"unknown reward {spec!r}: registered rewards are {sorted(REWARDS)}; for your own "
            "reward give its import path 'module:attribute', e.g. 'my_pkg.rewards:entailment'"
        )

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(
            f"reward spec {spec!r} is not an import path 'module:attribute' "
            "(e.g. 'my_pkg.rewards:entailment')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"reward {spec!r}: cannot import module {module_name!r} ({e}); install the package "
            "or put its directory on PYTHONPATH, and check the spelling"
        ) from e
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(
                f"reward {spec!r}: module {module_name!r} has no attribute {attribute!r}; "
                f"define it there or fix the name after ':'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(
            f"reward {spec!r} is a {type(target).__name__}, not callable; a reward is a function "
            "(prompts, completions, references) -> float array [B]"
        )
    return target


def combine(weights: dict[str, float]) -> Reward:
    """A reward that is `sum_name weights[name] * get_reward(name)(...)`.

    Names are resolved now (any spec `get_reward` accepts), so a typo fails here, not mid-run.
    E.g. `combine({"exact_answer": 1.0, "length_penalty": 0.1})`: the exact answer minus a tenth
    of the default length penalty. A component returning the wrong shape raises ValueError naming
    it; non-finite component values are not hidden (the built-in rewards never produce them).
    """
    if not weights:
        raise ValueError("combine: weights is empty; give {reward name: weight, ...}")
    parts: list[tuple[str, float, Reward]] = []
    for name, weight in weights.items():
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
        ):
            raise ValueError(f"combine: weight of {name!r} must be a finite number, got {weight!r}")
        parts.append((name, float(weight), get_reward(name)))

    def reward(
        prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]
    ) -> np.ndarray:
        _check_batch(prompts, completions, references, "combine")
        # Accumulate in float64 and round once, so the sum does not depend on the dict's order
        # beyond float64 rounding.
        total = np.zeros(len(completions), dtype=np.float64)
        for name, weight, fn in parts:
            values = np.asarray(fn(prompts, completions, references), dtype=np.float64)
            if values.shape != total.shape:
                raise ValueError(
                    f"combine: reward {name!r} returned shape {values.shape}, expected "
                    f"{total.shape} (one value per completion)"
                )
            total += weight * values
        return total.astype(np.float32)

    reward.__doc__ = "Weighted sum of rewards: " + " + ".join(f"{w} * {n}" for n, w, _ in parts)
    return reward
