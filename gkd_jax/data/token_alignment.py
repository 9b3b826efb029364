"""Aligning a student's sampled completion with the teacher's tokenization of the same text.

The student samples ids; their bytes (token_bytes) concatenated are the completion's text; the
teacher tokenizes that text on its own (`prefix_free_encoder`, no special tokens, no dummy prefix,
so its tokens' bytes concatenate to the text); the two tokenizations are cut into **chunks**:
maximal spans whose two ends are token boundaries (cumulative byte offsets) on both sides. On a
chunk both models give a probability of the same bytes: the product of their tokens' conditional
probabilities inside it, so the chunk log-probabilities of one side sum to that side's
log-probability of the whole completion.

Nothing is aligned on trust: the teacher's token bytes are concatenated and compared with the
student's. Where they differ (an invalid UTF-8 sequence the student sampled, which the teacher sees
as U+FFFD; a teacher normalizer that rewrites characters; text that spells a teacher special token,
such as "<end_of_turn>", which the teacher reads as that token; a student special token sampled
mid-completion, which is no text), the two byte strings are matched by a diff and every chunk whose
bytes are not identical on both sides is masked (chunk -1 on both sides) and counted. Later chunks
stay aligned, but they are conditioned on contexts that differ inside the masked span; `strict`
masks everything after the first masked chunk instead.

The stop token: a row whose last completion token is one of the student's stop ids ends with a
one-token chunk on each side, the student's stop token against `teacher_stop_id` (appended to the
teacher's ids): both predict "the reply ends here" after the same text.

Output contract (numpy, `Alignment`): chunk ids run 0..num_chunks-1 in text order on both sides,
every chunk holds >= 1 token on each side, and -1 marks a token that belongs to no chunk (padding,
masked, or cut off with a truncated teacher row). Masked teacher tokens are still real tokens of
the teacher's input (`teacher_mask`): the teacher must read them to score what follows.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import itertools
import os
from collections.abc import Sequence

import numpy as np

from gkd_jax.data.token_bytes import prefix_free_encoder, token_bytes

SENTINEL = b"\xff"  # a special sampled mid-completion: never a byte of valid UTF-8 text


@dataclasses.dataclass(frozen=True)
class Alignment:
    student_chunks: np.ndarray  # [B, N_s] int32, chunk of each completion token, -1: none
    teacher_ids: np.ndarray  # [B, N_t] int32, the teacher's completion, right-padded with pad id
    teacher_mask: np.ndarray  # [B, N_t] bool, True on the teacher's real tokens (masked ones too)
    teacher_chunks: np.ndarray  # [B, N_t] int32, chunk of each teacher token, -1: none
    num_chunks: np.ndarray  # [B] int32, chunks of the row (ids 0..num_chunks-1)
    stats: dict[str, float]  # batch totals, see `CompletionAligner.align`


@dataclasses.dataclass
class _Rows:
    """One batch on its way through: the student's text tokens and the teacher's encoding."""

    text: np.ndarray  # [B, N_s] bool, completion tokens that are text (not stop, not padding)
    stop_pos: np.ndarray  # [B] int64, position of the row's stop token, -1: it did not stop
    s_len: np.ndarray  # [B, N_s] int64, bytes of each text token (sentinel: 1), 0 elsewhere
    t_ids: np.ndarray  # [B, M] int64, the teacher's text tokens, M = longest row + 1
    t_len: np.ndarray  # [B, M] int64, their bytes
    t_count: np.ndarray  # [B] int64, the teacher's text tokens per row
    clean: np.ndarray  # [B] bool, teacher bytes == student bytes and no sentinel


class CompletionAligner:
    """Aligns batches of student completions with the teacher's tokenization (module docstring).

    Built once per (student, teacher) pair: the vocabularies' byte tables take ~0.5 s for
    Gemma's 262k ids."""

    def __init__(
        self,
        student_tokenizer,
        teacher_tokenizer,
        *,
        student_stop_ids: Sequence[int],
        teacher_stop_id: int,
        teacher_pad_id: int | None = None,
    ):
        self.student_bytes = token_bytes(student_tokenizer)
        self.teacher_bytes = token_bytes(teacher_tokenizer)
        self.encoder = prefix_free_encoder(teacher_tokenizer)
        self.stop_ids = np.asarray(sorted(set(student_stop_ids)), np.int64)
        self.teacher_stop_id = int(teacher_stop_id)
        pad = teacher_pad_id if teacher_pad_id is not None else teacher_tokenizer.pad_token_id
        self.teacher_pad_id = int(pad if pad is not None else teacher_stop_id)
        # One more entry, b"": ids the student's tokenizer lacks (a model's embedding table is
        # often padded past the vocabulary, and those rows can be sampled) stand for no text.
        self.student_bytes.append(b"")
        self._s_len = np.asarray([len(b) for b in self.student_bytes], np.int64)  # [V_s + 1]
        self._t_len = np.asarray([len(b) for b in self.teacher_bytes], np.int64)  # [V_t]

    def align(
        self,
        student_ids: np.ndarray,
        student_mask: np.ndarray,
        num_teacher_tokens: int,
        *,
        strict: bool = False,
    ) -> Alignment:
        """Chunks of a batch of sampled completions `student_ids` [B, N_s] (`student_mask` [B, N_s]
        True up to and including the first stop token, as the sampler returns them); the
        teacher's side is right-padded or cut to `num_teacher_tokens` (N_t) tokens.

        stats: student_tokens (real completion tokens), aligned_tokens (in a chunk),
        aligned_fraction, masked_student_tokens / masked_teacher_tokens (in a masked span),
        mismatched_rows (rows whose bytes differ somewhere), truncated_rows (teacher rows longer
        than N_t), truncated_student_tokens (student tokens whose chunk was cut off), chunks."""
        ids = np.asarray(student_ids).astype(np.int64)  # [B, N_s]
        unknown = len(self.student_bytes) - 1
        ids = np.where((ids >= 0) & (ids < unknown), ids, unknown)
        mask = np.asarray(student_mask, bool)  # [B, N_s]
        rows = self._encode(ids, mask)
        s_chunk, t_chunk, n_text = _fast_chunks(rows)
        stats = {"mismatched_rows": int((~rows.clean).sum())}
        for b in np.flatnonzero(~rows.clean):
            n_text[b] = self._slow_row(ids[b], rows, b, s_chunk[b], t_chunk[b], strict)
        stats["masked_student_tokens"] = int((rows.text & (s_chunk < 0)).sum())
        t_real = np.arange(rows.t_ids.shape[1])[None] < rows.t_count[:, None]  # [B, M]
        stats["masked_teacher_tokens"] = int((t_real & (t_chunk < 0)).sum())
        out = self._finish(rows, s_chunk, t_chunk, n_text, num_teacher_tokens, strict)
        stats |= out.stats
        stats["student_tokens"] = int(rows.text.sum() + (rows.stop_pos >= 0).sum())
        stats["aligned_tokens"] = int((out.student_chunks >= 0).sum())
        stats["aligned_fraction"] = stats["aligned_tokens"] / max(stats["student_tokens"], 1)
        stats["chunks"] = int(out.num_chunks.sum())
        return dataclasses.replace(out, stats=stats)

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> _Rows:
        """The rows' texts, the teacher's tokens of them, and which rows match byte for byte."""
        is_stop = mask & np.isin(ids, self.stop_ids)  # [B, N_s]
        stopped = is_stop.any(axis=1)  # [B]
        stop_pos = np.where(stopped, is_stop.argmax(axis=1), -1)  # [B]
        before_stop = (
            np.arange(ids.shape[1])[None] < np.where(stopped, stop_pos, ids.shape[1])[:, None]
        )
        text = mask & before_stop  # [B, N_s]
        s_len = np.where(text, self._s_len[ids], 0)  # [B, N_s]
        special = text & (s_len == 0)  # [B, N_s], no text: the sentinel stands in for it
        s_len = np.where(special, len(SENTINEL), s_len)
        table = self.student_bytes
        s_bytes = [
            b"".join([table[i] for i in row[keep].tolist()])
            for row, keep in zip(ids, text, strict=True)
        ]
        texts = [s.decode("utf-8", errors="replace") for s in s_bytes]
        # encode_batch_fast (tokenizers >= 0.20) skips the offsets, which are not used: 2x faster.
        encode = getattr(self.encoder, "encode_batch_fast", self.encoder.encode_batch)
        encodings = encode(texts, add_special_tokens=False)
        t_lists = [e.ids for e in encodings]
        t_count = np.fromiter(map(len, t_lists), np.int64, len(t_lists))  # [B]
        m = int(t_count.max(initial=0)) + 1  # room for the stop token
        t_ids = np.zeros((len(t_lists), m), np.int64)  # [B, M]
        t_ids[np.arange(m)[None] < t_count[:, None]] = np.fromiter(
            itertools.chain.from_iterable(t_lists), np.int64, int(t_count.sum())
        )
        t_len = np.where(np.arange(m)[None] < t_count[:, None], self._t_len[t_ids], 0)  # [B, M]
        tb = self.teacher_bytes
        # A zero-byte teacher token (a special the text spelled out) is never clean.
        t_real = np.arange(m)[None] < t_count[:, None]  # [B, M]
        whole = ~special.any(axis=1) & ((t_len > 0) | ~t_real).all(axis=1)  # [B]
        clean = whole & np.asarray(
            [b"".join([tb[i] for i in t]) == s for t, s in zip(t_lists, s_bytes, strict=True)], bool
        )
        return _Rows(text, stop_pos, s_len, t_ids, t_len, t_count, clean)

    def _slow_row(self, ids, rows: _Rows, b: int, s_chunk, t_chunk, strict: bool) -> int:
        """Chunks of a row whose bytes differ (module docstring), written into the row's
        `s_chunk` [N_s] and `t_chunk` [M]; returns the number of chunks."""
        keep = np.flatnonzero(rows.text[b])
        s_pieces = [self.student_bytes[i] or SENTINEL for i in ids[keep]]
        t_pieces = [self.teacher_bytes[i] for i in rows.t_ids[b, : rows.t_count[b]]]
        s_of, t_of, n = diff_chunks(s_pieces, t_pieces, strict)
        s_chunk[:] = -1
        s_chunk[keep] = s_of
        t_chunk[:] = -1
        t_chunk[: len(t_of)] = t_of
        return n

    def _finish(self, rows: _Rows, s_chunk, t_chunk, n_text, n_t: int, strict: bool) -> Alignment:
        """The stop chunk, then the teacher's side cut or padded to `n_t` tokens."""
        rows_b = np.arange(len(n_text))
        ended = rows.stop_pos >= 0  # [B], the teacher's input ends with its stop token too
        scored = ended & ~(strict & _has_masked(rows, s_chunk, t_chunk))  # [B]
        s_chunk[rows_b[scored], rows.stop_pos[scored]] = n_text[scored]
        t_ids, t_chunk = rows.t_ids.copy(), t_chunk.copy()
        t_ids[rows_b[ended], rows.t_count[ended]] = self.teacher_stop_id
        t_chunk[rows_b[scored], rows.t_count[scored]] = n_text[scored]
        num = n_text + scored  # [B]
        t_count = rows.t_count + ended  # [B]
        truncated = t_count > n_t
        # A chunk is whole only if all its teacher tokens fit: cut at the first chunk that spills.
        spill = np.where(t_chunk[:, n_t:] >= 0, t_chunk[:, n_t:], np.iinfo(np.int64).max)
        cut = np.minimum(num, spill.min(axis=1, initial=np.iinfo(np.int64).max))  # [B]
        cut_tokens = (s_chunk >= cut[:, None]).sum()
        s_chunk = np.where(s_chunk >= cut[:, None], -1, s_chunk)
        t_chunk = np.where(t_chunk >= cut[:, None], -1, t_chunk)
        width = max(n_t, t_ids.shape[1])
        t_ids = np.pad(t_ids, ((0, 0), (0, width - t_ids.shape[1])))[:, :n_t]  # [B, N_t]
        t_chunk = np.pad(t_chunk, ((0, 0), (0, width - t_chunk.shape[1])), constant_values=-1)
        t_mask = np.arange(n_t)[None] < t_count[:, None]  # [B, N_t]
        stats = {
            "truncated_rows": int(truncated.sum()),
            "truncated_student_tokens": int(cut_tokens),
        }
        return Alignment(
            student_chunks=s_chunk.astype(np.int32),
            teacher_ids=np.where(t_mask, t_ids, self.teacher_pad_id).astype(np.int32),
            teacher_mask=t_mask,
            teacher_chunks=np.where(t_mask, t_chunk[:, :n_t], -1).astype(np.int32),
            num_chunks=cut.astype(np.int32),
            stats=stats,
        )


def _has_masked(rows: _Rows, s_chunk: np.ndarray, t_chunk: np.ndarray) -> np.ndarray:
    t_real = np.arange(rows.t_ids.shape[1])[None] < rows.t_count[:, None]
    return (rows.text & (s_chunk < 0)).any(axis=1) | (t_real & (t_chunk < 0)).any(axis=1)


def _fast_chunks(rows: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunks of every row as if its two byte strings were identical (true of `rows.clean`;
    the other rows are redone by `diff_chunks`), the whole batch at once: the rows' byte offsets
    are laid end to end with a gap of one, so that one `isin` finds every row's common ends.

    Returns student chunks [B, N_s] and teacher chunks [B, M] (int64, -1 off the text) and the
    chunks per row [B]."""
    s_end = np.cumsum(rows.s_len, axis=1)  # [B, N_s], where each token ends in its row's text
    t_end = np.cumsum(rows.t_len, axis=1)  # [B, M]
    t_real = np.arange(rows.t_ids.shape[1])[None] < rows.t_count[:, None]  # [B, M]
    # A row's span is the longer side's bytes: a mismatched row must not reach into the next.
    length = np.maximum(s_end[:, -1:], t_end[:, -1:]).max(axis=1, initial=0)  # [B]
    base = (np.cumsum(length + 1) - (length + 1))[:, None]  # [B, 1]
    s_glob, t_glob = s_end + base, t_end + base
    s_bound = rows.text & np.isin(s_glob, t_glob[t_real])  # [B, N_s], ends a chunk
    t_bound = t_real & np.isin(t_glob, s_glob[rows.text])  # [B, M]
    s_chunk = np.where(rows.text, np.cumsum(s_bound, axis=1) - s_bound, -1)
    t_chunk = np.where(t_real, np.cumsum(t_bound, axis=1) - t_bound, -1)
    return s_chunk, t_chunk, s_bound.sum(axis=1)


def diff_chunks(
    s_pieces: list[bytes], t_pieces: list[bytes], strict: bool = False
) -> tuple[list[int], list[int], int]:
    """(chunk per student piece, chunk per teacher piece, chunks) of two tokenizations whose
    concatenations may differ: a boundary is a pair of offsets (student, teacher) that ends a
    token on both sides and lies in a stretch the diff matched; a span between two boundaries is a
    chunk if its bytes are identical on both sides, not empty on either and free of zero-byte
    teacher tokens; every other span is masked (-1), and with `strict` so is everything after the
    first masked span. Chunks are numbered in order, masked spans skipped."""
    s, t = b"".join(s_pieces), b"".join(t_pieces)
    s_ends = list(itertools.accumulate(map(len, s_pieces)))
    t_ends = list(itertools.accumulate(map(len, t_pieces)))
    s_offsets, t_offsets = [0, *s_ends], {0, *t_ends}
    pairs = {(0, 0), (len(s), len(t))}
    for a, bt, size in _matching_blocks(s, t):
        lo, hi = bisect.bisect_left(s_offsets, a), bisect.bisect_right(s_offsets, a + size)
        pairs |= {(x, bt + x - a) for x in s_offsets[lo:hi] if bt + x - a in t_offsets}
    pairs = sorted(pairs)
    empty_at = {e for e, piece in zip(t_ends, t_pieces, strict=True) if not piece}
    spans, n, masked_before = [], 0, False
    for (s0, t0), (s1, t1) in zip(pairs, pairs[1:], strict=False):
        ok = s1 > s0 and t1 > t0 and s[s0:s1] == t[t0:t1]
        ok &= not (empty_at and any(t0 <= e <= t1 for e in empty_at))
        ok &= not (strict and masked_before)
        masked_before |= not ok
        spans.append(n if ok else -1)
        n += ok
    s_span_end, t_span_end = [p[0] for p in pairs[1:]], [p[1] for p in pairs[1:]]
    s_of = [spans[bisect.bisect_left(s_span_end, e)] for e in s_ends]
    t_of = [
        spans[bisect.bisect_left(t_span_end, e)] if piece else -1
        for e, piece in zip(t_ends, t_pieces, strict=True)
    ]
    return s_of, t_of, n


def _matching_blocks(s: bytes, t: bytes) -> list[tuple[int, int, int]]:
    """difflib's matching blocks (a, b, size): s[a:a+size] == t[b:b+size], increasing in both.
    The common head and tail are taken first: a difference is usually a few bytes (a character
    cut at the end of a row), and difflib is quadratic-ish in what it is given."""
    head = len(os.path.commonprefix([s, t]))
    tail = len(os.path.commonprefix([s[head:][::-1], t[head:][::-1]]))
    mid_s, mid_t = s[head : len(s) - tail], t[head : len(t) - tail]
    middle = difflib.SequenceMatcher(None, mid_s, mid_t, autojunk=False).get_matching_blocks()
    blocks = [(0, 0, head)] + [(head + a, head + b, n) for a, b, n in middle if n]
    return blocks + [(len(s) - tail, len(t) - tail, tail)]


def teacher_prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """The teacher's prompt ids: a user turn (or the given messages) rendered by its chat template
    with the generation prompt, as data/chat.py renders a record's prompt; a tokenizer without a
    template tokenizes the text plainly, with its BOS. The student's prompt is its own, never
    realigned: only the completions are compared."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        raise ValueError(
            f"the teacher's tokenizer ({type(tokenizer).__name__}) has no chat template, so a "
            "prompt given as messages cannot be rendered: give the prompt as text"
        )
    return list(tokenizer(prompt)["input_ids"])
