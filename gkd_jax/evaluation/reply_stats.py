"""What the replies themselves look like, beside their scores, and a warning when they collapse.

A divergence measured on a model's own replies (the chat task's on-policy JSD) can be gamed: a
student that answers every prompt with 48 newlines is easy for the teacher to predict there, and
"improved" 0.540 -> 0.352 that way (issue 24). These statistics, from the token ids alone (host
numpy, no model), make such a collapse visible.

Replies are token ids [N, T] with a mask [N, T], True up to and including the first stop token,
as the samplers, beam search and pipeline.pack (the references) give them. A reply's *content* is
its masked tokens without a final stop token; every statistic below is over content tokens:

  reply_tokens        mean content tokens per reply
  reply_stopped       share of replies that end with a stop token
  reply_truncated     share that fill all T positions without one (ran to max_new_tokens)
  distinct_1/2        pooled over the replies (Li et al., 2016): unique n-grams / all n-grams,
                      n-grams taken inside each reply (none spans two); 0 where there are none
  top_token_share     the share of all content tokens that the most frequent token makes up
  repetitive_replies  share of replies of >= REPETITIVE_MIN_TOKENS tokens whose most frequent
                      token is more than half of them (a shorter reply, "42", proves nothing)

`collapse_evidence` compares a model's statistics with the references' (the dataset's targets,
same prompts, same tokenizer): pooled distinct-n and reply length depend on the task and the
tokenizer (a character-level arithmetic answer has few distinct bigrams however good it is), so
the thresholds are relative to what the data itself looks like.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

# Collapse thresholds (collapse_evidence), relative to the references where the statistic depends
# on the task: healthy replies sit far from each (a 2x longer reply lowers pooled distinct-2 by
# ~20%, not 4x).
TRUNCATED_SHARE = 0.9  # replies that ran to max_new_tokens, while the references mostly stop
REFERENCE_TRUNCATED_SHARE = 0.5  # ... above this, long data explain truncated replies
TOP_TOKEN_SHARE = 0.5  # one token is most of all reply tokens (and 2x the references' share)
DISTINCT_2_RATIO = 0.25  # distinct-2 under a quarter of the references'
REPETITIVE_MIN_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class ReplyStats:
    """The statistics of one set of replies (see the module docstring); `scores()` are the
    reported ones, `top_token` the id behind top_token_share (-1: no content tokens)."""

    reply_tokens: float
    reply_stopped: float
    reply_truncated: float
    distinct_1: float
    distinct_2: float
    top_token_share: float
    repetitive_replies: float
    top_token: int

    def scores(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in NAMES}


NAMES = tuple(f.name for f in dataclasses.fields(ReplyStats) if f.name != "top_token")


def split_replies(
    tokens: np.ndarray, mask: np.ndarray, stop_ids: Sequence[int]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(content tokens of each reply [L_i], stopped [N], truncated [N]) of tokens/mask [N, T]:
    a reply stopped when its last masked token is a stop id (dropped from its content); it was
    truncated when it fills all T positions without one. An all-pad row is neither."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    stops = np.asarray(list(stop_ids), tokens.dtype)
    replies, stopped = [], np.zeros(len(tokens), bool)
    for i, (row, keep) in enumerate(zip(tokens, mask, strict=True)):
        ids = row[keep]  # [L]
        stopped[i] = len(ids) > 0 and bool(np.isin(ids[-1], stops))
        replies.append(ids[:-1] if stopped[i] else ids)
    truncated = ~stopped & mask.all(axis=1)  # [N]
    return replies, stopped, truncated


def distinct_n(replies: Sequence[np.ndarray], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over `replies` (n-grams inside each reply); 0.0
    where no reply has n tokens."""
    grams = [tuple(r[i : i + n].tolist()) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def most_frequent(replies: Sequence[np.ndarray]) -> tuple[int, float]:
    """(id, share) of the most frequent token over all of `replies`' tokens; (-1, 0.0) if none."""
    counts = Counter(np.concatenate([np.asarray(r) for r in replies] or [[]]).tolist())
    if not counts:
        return -1, 0.0
    token, count = counts.most_common(1)[0]
    return int(token), count / counts.total()


def repetitive_share(replies: Sequence[np.ndarray]) -> float:
    """The share of `replies` with >= REPETITIVE_MIN_TOKENS tokens whose most frequent token is
    more than half of its tokens (over all replies, short ones counting as not repetitive)."""
    if not replies:
        return 0.0
    hits = [
        len(r) >= REPETITIVE_MIN_TOKENS and 2 * Counter(r.tolist()).most_common(1)[0][1] > len(r)
        for r in replies
    ]
    return float(np.mean(hits))


def reply_stats(tokens: np.ndarray, mask: np.ndarray, stop_ids: Sequence[int]) -> ReplyStats:
    """The statistics of replies tokens/mask [N, T] (stop ids `stop_ids`), N >= 1."""
    replies, stopped, truncated = split_replies(tokens, mask, stop_ids)
    top, share = most_frequent(replies)
    return ReplyStats(
        reply_tokens=float(np.mean([len(r) for r in replies])),
        reply_stopped=float(np.mean(stopped)),
        reply_truncated=float(np.mean(truncated)),
        distinct_1=distinct_n(replies, 1),
        distinct_2=distinct_n(replies, 2),
        top_token_share=share,
        repetitive_replies=repetitive_share(replies),
        top_token=top,
    )


def collapse_evidence(
    stats: ReplyStats, references: ReplyStats, token_text: Callable[[int], str] = str
) -> list[str]:
    """Why replies with `stats` look collapsed, compared with the references' (one phrase per
    sign; [] for healthy replies). `token_text(id)` shows the dominant token."""
    evidence = []
    if (
        stats.reply_truncated >= TRUNCATED_SHARE
        and references.reply_truncated <= REFERENCE_TRUNCATED_SHARE
    ):
        evidence.append(
            f"{stats.reply_truncated:.0%} of replies ran to max_new_tokens without a stop "
            f"token (references: {references.reply_truncated:.0%})"
        )
    if stats.top_token_share > max(TOP_TOKEN_SHARE, 2 * references.top_token_share):
        evidence.append(
            f"one token, {token_text(stats.top_token)!r} (id {stats.top_token}), is "
            f"{stats.top_token_share:.0%} of all reply tokens (references' most frequent: "
            f"{references.top_token_share:.0%})"
        )
    if stats.distinct_2 < DISTINCT_2_RATIO * references.distinct_2:
        evidence.append(
            f"distinct-2 {stats.distinct_2:.3f} (references: {references.distinct_2:.3f})"
        )
    return evidence


def one_line(text: str, width: int, *, keep_end: bool = False) -> str:
    """`text` cut to `width` characters with "..." at its end (at its start with `keep_end`: a
    prompt's end is its question), then put on one line: newlines and tabs shown as \\n, \\t."""
    if len(text) > width:
        text = "..." + text[-(width - 3) :] if keep_end else text[: width - 3] + "..."
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def sample_lines(samples: Sequence[tuple[str, str]], width: int = 160) -> list[str]:
    """One line per (prompt, reply): "  1. ...prompt end -> reply start", for the logs."""
    return [
        f"  {i}. {one_line(p, width // 2, keep_end=True)} -> {one_line(r, width)}"
        for i, (p, r) in enumerate(samples, 1)
    ]
