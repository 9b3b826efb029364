"""Procedurally generated arithmetic word problems ("arith"), the default embedded task.

Each problem is a short GSM8K-style word problem whose answer is the sum of 2-4 two-digit
numbers (10..99), e.g.::

    prompt: "Ann has 23 pens, gets 45 and 12. How many?"
    target: "23+45=68 68+12=80 #### 80"

The target is a chain of thought with one running-sum step per added term, followed by
``" #### "`` and the final answer (the GSM8K answer convention, parsed by
:func:`extract_answer`). Sequences are kept deliberately short (prompt <= ``PROMPT_CHARS``,
target <= ``TARGET_CHARS`` characters) so that tiny character-level models can be trained
on CPU.

Train and test splits are disjoint by construction: a problem belongs to the test split iff
a stable hash (CRC32) of its sorted term tuple is 0 mod 10, so the same multiset of numbers
never appears in both splits, whatever the template, name, object or term order.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

PROMPT_CHARS = 48
TARGET_CHARS = 48

MIN_TERMS = 2
MAX_TERMS = 4
MIN_VALUE = 10
MAX_VALUE = 99
TEST_MOD = 10  # a problem is in "test" iff crc32(sorted terms) % TEST_MOD == 0

SPLITS = ("train", "test")

NAMES = ("Ann", "Bo", "Cy", "Dee", "Eve", "Max", "Sue", "Tom")
OBJECTS = ("pens", "cats", "cups", "eggs", "hats", "figs")

# Each template gets: name, obj, first (first term), rest (the other terms, joined with
# ", " and " and "), rest_c (the other terms joined with ", "), all (every term joined with
# ", " and " and ").
TEMPLATES = (
    "{name} has {first} {obj}, gets {rest}. How many?",
    "{name} saw {first} {obj}, then {rest_c}. Total?",
    "{name} had {first} {obj} and got {rest}. Now?",
    "{name} buys {all} {obj}. In all?",
    "Add {name}'s {obj}: {all_c}. Total?",
    "{name} packs {all} {obj}. Count?",
)

_ANSWER_RE = re.compile(r"\s*([+-]?\d+)")


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str
    answer: int


def _join_and(nums: list[int]) -> str:
    parts = [str(x) for x in nums]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _join_comma(nums: list[int]) -> str:
    return ", ".join(str(x) for x in nums)


def split_of(terms: tuple[int, ...] | list[int]) -> str:
    """Split ("train" or "test") that a problem with these terms belongs to."""
    key = ",".join(str(x) for x in sorted(terms)).encode()
    return "test" if zlib.crc32(key) % TEST_MOD == 0 else "train"


def render_prompt(terms: list[int], template: int, name: str, obj: str) -> str:
    return TEMPLATES[template].format(
        name=name,
        obj=obj,
        first=terms[0],
        rest=_join_and(terms[1:]),
        rest_c=_join_comma(terms[1:]),
        all=_join_and(terms),
        all_c=_join_comma(terms),
    )


def render_target(terms: list[int]) -> str:
    steps = []
    total = terms[0]
    for x in terms[1:]:
        new = total + x
        steps.append(f"{total}+{x}={new}")
        total = new
    return " ".join(steps) + f" #### {total}"


def _rng_for(split: str, seed: int) -> random.Random:
    # Deterministic across processes (no salted hash()).
    return random.Random(zlib.crc32(f"arith:{split}:{seed}".encode()) + (seed << 32))


def make_examples(split: str, n: int, seed: int) -> list[Example]:
    """Generate ``n`` seeded examples of ``split`` ("train" or "test").

    Test examples are unique (no repeated ordered term tuple); train may repeat.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = _rng_for(split, seed)
    seen: set[tuple[int, ...]] = set()
    out: list[Example] = []
    attempts = 0
    max_attempts = 1000 * max(n, 1) + 100_000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"could not generate {n} unique {split} examples")
        k = rng.randint(MIN_TERMS, MAX_TERMS)
        terms = [rng.randint(MIN_VALUE, MAX_VALUE) for _ in range(k)]
        template = rng.randrange(len(TEMPLATES))
        name = rng.choice(NAMES)
        obj = rng.choice(OBJECTS)
        if split_of(terms) != split:
            continue
        if split == "test":
            key = tuple(terms)
            if key in seen:
                continue
            seen.add(key)
        prompt = render_prompt(terms, template, name, obj)
        target = render_target(terms)
        assert len(prompt) <= PROMPT_CHARS and len(target) <= TARGET_CHARS, (prompt, target)
        out.append(Example(prompt=prompt, target=target, answer=sum(terms)))
    return out


def extract_answer(text: str) -> int | None:
    """The signed integer right after the last ``####`` in ``text``; None if absent."""
    if "####" not in text:
        return None
    m = _ANSWER_RE.match(text.rsplit("####", 1)[1])
    if m is None:
        return None
    return int(m.group(1))
