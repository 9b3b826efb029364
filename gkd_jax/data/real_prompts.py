"""Short chat prompts of several task families, answered by a teacher: the data of the real-model
healing study (docs/real_heal.md), made offline with a fixed seed.

    python -m gkd_jax.data.real_prompts --teacher ~/.cache/real-models/smollm2-135m-instruct \
        --out ~/real_heal_data [--train 448 --heldout 112 --seed 0 --max_new_tokens 48]

writes OUT/train.jsonl and OUT/heldout.jsonl, one record per prompt in TRL's conversational
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

import argparse
import dataclasses
import json
import os
import time
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
    import jax  # here: the prompt families above need neither JAX nor a model
    import jax.numpy as jnp

    from gkd_jax.data import hf_tokenizer, pipeline
    from gkd_jax.models import functional_lm, load_pretrained
    from gkd_jax.sampling import SamplingConfig, make_sampler

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
    replies, truncated, start = [], [], time.time()
    for i, batch in enumerate(pipeline.in_order(data, batch_size)):
        out = sampler(params, jnp.asarray(batch["prompt"]), jnp.asarray(batch["prompt_mask"]),
                      jax.random.key(0))  # fmt: skip
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)  # [B, N] each
        for row in np.nonzero(batch["valid"])[0]:
            kept = tokens[row][mask[row]]
            stopped = len(kept) > 0 and int(kept[-1]) in stops
            replies.append(tokenizer.decode(kept, skip_special_tokens=True))
            truncated.append(not stopped)
        done = min((i + 1) * batch_size, len(texts))
        log(f"[real_prompts] teacher replied to {done}/{len(texts)} ({time.time() - start:.0f}s)")
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
    from gkd_jax.metrics import answer_correct

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
        print(f"[real_prompts] {name}: {len(prompts) - skipped} records -> {out}/{name}.jsonl")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary["heldout"], indent=1))


if __name__ == "__main__":
    main()
