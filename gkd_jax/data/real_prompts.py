"""Short chat prompts of several task families, answered by a teacher: the data of the real-model
healing study (docs/results/real_heal_protocol.md), made offline with a fixed seed.

    python -m gkd_jax.teacher_replies --teacher ~/.cache/real-models/smollm2-135m-instruct \
        --out ~/real_heal_data [--train 448 --heldout 112 --seed 0 --max_new_tokens 48]

(gkd_jax/teacher_replies.py: the half that runs the teacher) writes OUT/train.jsonl and
OUT/heldout.jsonl, one record per prompt in TRL's conversational
format with two extra fields (gkd_jax/data/chat.py reads both):

    {"messages": [{"role": "user", "content": "What is 7 plus 5?"},
                  {"role": "assistant", "content": "<the teacher's greedy reply>"}],
     "family": "add", "answer": "12"}

("answer" only in the checkable families; evaluation scores it as answer_accuracy,
metrics.answer_correct) and OUT/summary.json (counts, the teacher's accuracy per family, how
many replies ran to max_new_tokens). The completions ARE the teacher's greedy replies, so
supervised KD on train.jsonl (lmbda 0) is sequence-level KD, and the student's NLL of the
held-out records ("reference_nll") is its NLL of what the teacher says.

Families (FAMILIES), four checkable: add (operands 1-12), sub (minuend 2-20), copy (repeat a
3-word list), capital (of a country, hand-written list); three not: name (an example of a
category), define (a word in one sentence), rewrite (a sentence in the past tense), from
hand-written lists. The teacher (SmolLM2-135M-Instruct, 4-bit weights) fails two-digit sums,
reversing and capitalising nearly always, so those were left out: an accuracy at the floor
separates nothing. Train and held-out share no prompt text and no item (operand pair, word
list, country, category, word, sentence: the prompt's `key`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lamp", "bread", "chair", "garden", "window",
    "horse", "candle", "forest", "rabbit", "silver", "pencil", "ocean", "mirror", "basket",
    "castle", "flower", "kettle", "planet", "rocket", "saddle", "turtle", "violin", "wagon",
    "yellow", "zebra", "butter", "coffee", "dragon", "engine", "feather", "guitar", "island",
    "jacket", "ladder", "monkey",
)  # fmt: skip
CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Egypt", "Cairo"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Cuba", "Havana"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Israel", "Jerusalem"),
    ("Saudi Arabia", "Riyadh"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("North Korea", "Pyongyang"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"), ("Australia", "Canberra"),
    ("New Zealand", "Wellington"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Ghana", "Accra"), ("Senegal", "Dakar"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Czech Republic", "Prague"), ("Slovakia", "Bratislava"),
    ("Iceland", "Reykjavik"), ("Afghanistan", "Kabul"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Sri Lanka", "Colombo"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Uruguay", "Montevideo"),
    ("Paraguay", "Asuncion"), ("Bolivia", "La Paz"), ("Jamaica", "Kingston"),
    ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Qatar", "Doha"),
    ("Tunisia", "Tunis"), ("Algeria", "Algiers"), ("Libya", "Tripoli"), ("Sudan", "Khartoum"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"),
    ("Mongolia", "Ulaanbaatar"), ("Zimbabwe", "Harare"),
    ("Uganda", "Kampala"),
)  # fmt: skip
CAPITAL_TEMPLATE = "What is the capital of {}?"
CATEGORIES = (
    "colour", "animal", "fruit", "vegetable", "country", "city", "musical instrument", "sport",
    "tree", "flower", "bird", "fish", "insect", "planet", "metal", "language", "vehicle",
    "piece of furniture", "kitchen tool", "board game", "dance", "mammal", "reptile", "gemstone",
    "spice", "drink", "dessert", "kind of bread", "kind of cheese", "ocean", "mountain range",
    "river", "profession", "tool", "toy", "fabric", "weather event", "shape", "holiday",
    "sea animal",
)  # fmt: skip
NAME_TEMPLATES = ("Name {}.", "Give one example of {}.")  # {} = the category with its article
DEFINE_WORDS = (
    "library", "volcano", "bicycle", "democracy", "friendship", "umbrella", "gravity", "recipe",
    "harbor", "orchestra", "telescope", "vaccine", "glacier", "museum", "alphabet", "battery",
    "calendar", "desert", "election", "fossil", "galaxy", "hospital", "invention", "journal",
    "keyboard", "lighthouse", "magnet", "newspaper", "oxygen", "passport", "question", "rainbow",
    "satellite", "thermometer", "university", "vitamin", "waterfall", "yoghurt", "compass",
    "dictionary", "earthquake", "forest", "garden", "honey", "island", "jungle", "kitchen",
    "language", "market", "nest", "orbit", "puzzle", "receipt", "shadow", "tunnel", "volunteer",
    "whistle", "bakery", "castle", "diamond", "engine", "festival", "helmet", "insect", "ladder",
    "mirror", "novel", "pillow", "robot", "spider", "ticket", "village", "wallet", "anchor",
    "bridge", "candle", "dolphin", "envelope", "farmer", "ghost",
)  # fmt: skip
DEFINE_TEMPLATE = "What does the word '{}' mean? Answer in one sentence."
SUBJECTS = (
    "The cat", "My brother", "The teacher", "Our neighbour", "The little girl", "The farmer",
    "My friend", "The old man", "The doctor", "The baker", "Her sister", "The pilot",
)  # fmt: skip
PREDICATES = (
    "eats an apple", "walks to the park", "reads a book", "drinks a cup of tea",
    "opens the window", "writes a letter", "plays the piano", "cooks dinner",
    "cleans the kitchen", "watches the birds",
)  # fmt: skip
REWRITE_TEMPLATE = "Rewrite this sentence in the past tense: {} every day."


@dataclasses.dataclass(frozen=True)
class Prompt:
    family: str
    key: str  # the item behind the prompt; the splits never share one
    text: str  # the user turn
    answer: str | None  # checkable answer (metrics.answer_correct), None: not checkable


def _synthetic(draw: Callable[[np.random.Generator], Prompt]):
    """A family of endless prompts: (rng, n) -> n prompts with distinct keys, drawn by `draw`
    (so each prompt is its own key)."""

    def family(rng: np.random.Generator, n: int) -> list[Prompt]:
        out: dict[str, Prompt] = {}
        for _ in range(100 * n):  # the spaces hold thousands of keys: this never runs out
            p = draw(rng)
            out.setdefault(p.key, p)
            if len(out) == n:
                return list(out.values())
        raise ValueError(f"family {draw.__name__}: fewer than {n} distinct prompts")

    return family


def _add(rng: np.random.Generator) -> Prompt:
    # Small operands: the 4-bit 135M teacher gets two-digit sums mostly wrong (a probe of it:
    # 1 right in 16), and an accuracy at the floor would tell the cells apart by nothing.
    a, b = (int(x) for x in rng.integers(1, 13, 2))
    return Prompt("add", f"{a}+{b}", f"What is {a} plus {b}?", str(a + b))


def _sub(rng: np.random.Generator) -> Prompt:
    a = int(rng.integers(2, 21))
    b = int(rng.integers(1, a))
    return Prompt("sub", f"{a}-{b}", f"What is {a} minus {b}?", str(a - b))


def _copy(rng: np.random.Generator) -> Prompt:
    # Copying, not reversing or capitalising: the teacher does neither of those (probe: 0 of 32).
    w = [WORDS[i] for i in rng.choice(len(WORDS), 3, replace=False)]
    text = f"Repeat these words exactly: {' '.join(w)}"
    return Prompt("copy", " ".join(w), text, " ".join(w))


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _listed(prompts: list[Prompt]):
    """A family of a hand-written list: (rng, n) -> up to n of them in a seeded order of keys
    (a key's prompts stay together, so splits taken in order share no key)."""

    def family(rng: np.random.Generator, n: int) -> list[Prompt]:
        keys = sorted({p.key for p in prompts})
        order = {k: i for i, k in enumerate(rng.permutation(keys))}
        return sorted(prompts, key=lambda p: (order[p.key], p.text))[:n]

    return family


FAMILIES: dict[str, Callable[[np.random.Generator, int], list[Prompt]]] = {
    "add": _synthetic(_add),
    "sub": _synthetic(_sub),
    "copy": _synthetic(_copy),
    "capital": _listed([Prompt("capital", c, CAPITAL_TEMPLATE.format(c), a) for c, a in CAPITALS]),
    "name": _listed(
        [Prompt("name", c, t.format(_article(c)), None) for c in CATEGORIES for t in NAME_TEMPLATES]
    ),
    "define": _listed([Prompt("define", w, DEFINE_TEMPLATE.format(w), None) for w in DEFINE_WORDS]),
    "rewrite": _listed(
        [
            Prompt("rewrite", f"{s} {p}", REWRITE_TEMPLATE.format(f"{s} {p}"), None)
            for s in SUBJECTS
            for p in PREDICATES
        ]
    ),
}


SLACK = 8  # prompts drawn past a family's share: a key cut by the held-out boundary is dropped


def _shares(total: int, k: int) -> list[int]:
    """`total` split over k families as evenly as it goes (the first ones get the remainder)."""
    return [total // k + (i < total % k) for i in range(k)]


def make_prompts(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) prompts: each family's share of both, drawn from one seeded stream per
    family; held-out takes whole keys first, and train only keys held-out has none of. Rows are
    interleaved across families (a batch mixes them)."""
    names = list(FAMILIES)
    train, heldout = [], []
    for name, nt, nh in zip(
        names, _shares(n_train, len(names)), _shares(n_heldout, len(names)), strict=True
    ):
        rng = np.random.default_rng([seed, names.index(name)])
        drawn = FAMILIES[name](rng, nt + nh + SLACK)  # a hand-written family: all it has
        held = drawn[:nh]
        held_keys = {p.key for p in held}
        rest = [p for p in drawn[nh:] if p.key not in held_keys]  # a split key's tail: dropped
        if len(rest) < nt:
            raise ValueError(
                f"family {name} has {len(drawn)} prompts: not enough for {nh} held-out and "
                f"{nt} training ones with no item in common; lower --train / --heldout"
            )
        heldout.append(held)
        train.append(rest[:nt])
    return _interleave(train), _interleave(heldout)


def _interleave(groups: Sequence[list[Prompt]]) -> list[Prompt]:
    """Round-robin over the families' lists: add, sub, ..., add, sub, ..."""
    out, longest = [], max(map(len, groups), default=0)
    for i in range(longest):
        out += [g[i] for g in groups if i < len(g)]
    return out
