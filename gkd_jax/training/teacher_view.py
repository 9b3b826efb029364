"""The teacher's view of a batch when teacher and student tokenize differently (gkd.cross_tokenizer,
objectives/cross_tokenizer.py): built on the host between sampling and the jitted step, where
the rewards are (reward_scoring.py), from the rows' example indices and the student's sampled
completions.

  TeacherView        per run: every training prompt in the teacher's tokenization (its chat
                     template), left-padded as pipeline.pack pads the student's; per batch: the
                     teacher's ids of the completions' text and both sides' chunks (the aligner,
                     data/token_alignment.py)
  same_tokenizer     whether the two tokenizers are one (then nothing is aligned)
  build_vocab_map    the matched vocabulary (student ids [K], teacher ids [K]) of matched_jsd /
                     hybrid_uld, built once
  teacher_lengths    (P_t, N_t) from the config

Batch keys added (numpy; B rows, N_s the student's completion length):

  teacher_prompt           int32 [B, P_t]  left-padded with the teacher's pad id
  teacher_prompt_mask      bool  [B, P_t]
  teacher_completion       int32 [B, N_t]  the teacher's tokens of the completion text + its
                                           stop token where the student stopped, right-padded
  teacher_completion_mask  bool  [B, N_t]  its real tokens (masked, unaligned ones too: the
                                           teacher must read them to score what follows)
  student_chunks           int32 [B, N_s]  chunk of each student completion token, -1: none
  teacher_chunks           int32 [B, N_t]  chunk of each teacher completion token, -1: none

The objectives' static chunk bound C is `num_chunks_max` = min(N_s, N_t): every chunk the aligner
keeps holds >= 1 token on each side (its output contract), so a row has at most min(N_s, N_t)
of them; each batch is checked against it (cross_tokenizer.check_chunks), never cut silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from gkd_jax.data.pipeline import left_pad
from gkd_jax.data.records import PROMPT_OVERFLOW
from gkd_jax.data.token_alignment import CompletionAligner, teacher_prompt_ids
from gkd_jax.data.token_bytes import token_bytes, vocab_map
from gkd_jax.objectives.cross_tokenizer import check_chunks, check_vocab_map

TEACHER_VIEW_KEYS = (
    "teacher_prompt",
    "teacher_prompt_mask",
    "teacher_completion",
    "teacher_completion_mask",
    "student_chunks",
    "teacher_chunks",
)


def teacher_lengths(config) -> tuple[int, int]:
    """(P_t, N_t): data.teacher_max_prompt_len (0 = data.max_prompt_len) and
    gkd.teacher_max_new_tokens (0 = 2 x max_new_tokens: room for a teacher that spends up to
    two tokens per student token, e.g. byte fallback on text the student has whole tokens for;
    longer rows lose their last chunks, counted in the stats as truncated_rows)."""
    p_t = config.data.teacher_max_prompt_len or config.data.max_prompt_len
    n_t = config.gkd.teacher_max_new_tokens or 2 * config.max_new_tokens
    return int(p_t), int(n_t)


def _pipeline_state(tokenizer) -> tuple:
    """What decides how a fast tokenizer turns text into ids and ids into text: its model
    (vocabulary, merges or scores), normalizer, pre-tokenizer, decoder and added tokens."""
    backend = tokenizer.backend_tokenizer
    parts = []
    for name in ("normalizer", "pre_tokenizer", "decoder"):
        part = getattr(backend, name)
        parts.append(None if part is None else json.loads(part.__getstate__()))
    model = json.loads(backend.model.__getstate__())
    added = sorted(
        (i, a.content, a.special, a.normalized, a.lstrip, a.rstrip, a.single_word)
        for i, a in backend.get_added_tokens_decoder().items()
    )
    return model, *parts, added


def same_tokenizer(student_tokenizer, teacher_tokenizer) -> bool:
    """Whether the two tokenizers are one: the same size, the same vocabulary (token -> id,
    added tokens too) and the same model, normalizer, pre-tokenizer and decoder specs
    (tokenizer.json's), so that every text gets the same ids and every id the same text. Chat
    templates are not compared: with one tokenizer the teacher reads the student's prompt, as
    every same-vocabulary run does today."""
    if student_tokenizer is teacher_tokenizer:
        return True
    if len(student_tokenizer) != len(teacher_tokenizer):
        return False
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        return False
    return _pipeline_state(student_tokenizer) == _pipeline_state(teacher_tokenizer)


def build_vocab_map(
    student_tokenizer,
    teacher_tokenizer,
    *,
    student_stop_id: int,
    teacher_stop_id: int,
    student_vocab: int,
    teacher_vocab: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(student ids [K], teacher ids [K]) int32, the vocabulary map of matched_jsd / hybrid_uld,
    checked by cross_tokenizer.check_vocab_map against the models' vocabularies `student_vocab`
    / `teacher_vocab` (their logits' last axis, after the step's cut to them).

    Two tokenizers: the ids whose byte strings are identical (token_bytes.vocab_map), ids past a
    model's table dropped, plus (student_stop_id, teacher_stop_id): at the stop chunk's start
    both predict "the reply ends here" (the aligner's stop chunk), so that probability is
    compared bin to bin; the student's other stop ids fall in its tail bin. One tokenizer
    (same_tokenizer): the identity over min(student_vocab, teacher_vocab), every id matched and
    no tail bin, so matched_jsd is today's per-token divergence exactly."""
    if same_tokenizer(student_tokenizer, teacher_tokenizer):
        ids = np.arange(min(student_vocab, teacher_vocab), dtype=np.int32)  # [K]
        check_vocab_map(ids, ids, student_vocab, teacher_vocab)
        return ids, ids.copy()
    s_ids, t_ids = vocab_map(
        token_bytes(student_tokenizer, student_vocab), token_bytes(teacher_tokenizer, teacher_vocab)
    )  # [K'] each
    keep = (s_ids < student_vocab) & (t_ids < teacher_vocab)
    # A stop id is special (no text), so never matched above; the guard keeps ids distinct
    # should a tokenizer declare a text token its stop.
    keep &= (s_ids != student_stop_id) & (t_ids != teacher_stop_id)
    s_ids = np.append(s_ids[keep], np.int32(student_stop_id)).astype(np.int32)  # [K]
    t_ids = np.append(t_ids[keep], np.int32(teacher_stop_id)).astype(np.int32)  # [K]
    check_vocab_map(s_ids, t_ids, student_vocab, teacher_vocab)
    return s_ids, t_ids


def pack_teacher_prompts(
    prompt_ids: Sequence[Sequence[int]], max_len: int, pad_id: int, overflow: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt [N, P_t] int32 left-padded with pad_id, mask [N, P_t] bool, prompts cut), as
    pipeline.pack lays out the student's prompts. A prompt over max_len: "error" raises, naming
    the count and the fix; "truncate_left" keeps its last max_len ids (the generation prompt a
    template ends with)."""
    if overflow not in PROMPT_OVERFLOW:
        raise ValueError(f"prompt overflow {overflow!r}: one of {PROMPT_OVERFLOW}")
    long = [i for i, p in enumerate(prompt_ids) if len(p) > max_len]
    empty = [i for i, p in enumerate(prompt_ids) if not len(p)]
    if empty or (long and overflow == "error"):
        i = (empty or long)[0]
        raise ValueError(
            f"{len(long)} of {len(prompt_ids)} teacher prompts are longer than "
            f"data.teacher_max_prompt_len={max_len} and {len(empty)} are empty; first is #{i} "
            f"({len(prompt_ids[i])} tokens). Raise data.teacher_max_prompt_len, or set "
            "data.prompt_overflow='truncate_left'."
        )
    kept = [list(p)[-max_len:] for p in prompt_ids]  # "truncate_left" (or nothing is long)
    prompt, mask = left_pad(kept, max_len, pad_id)  # [N, P_t] each
    return prompt, mask, len(long)


class TeacherView:
    """The teacher's batch arrays beside the student's (module docstring), built once per run.

    `prompts`: the training split's prompts in example order, each a text or a list of chat
    messages (teacher_prompt_ids renders them with the teacher's template); example index i of
    a batch is prompts[i]. The student's stop ids, the teacher's stop id (e.g. Gemma's
    <end_of_turn> for chat) and pad id, N_s (the student's completion length, max_new_tokens),
    N_t and P_t (teacher_lengths) and how an over-long teacher prompt is handled (PROMPT_OVERFLOW;
    config.data.prompt_overflow) are fixed for the run.

    With one tokenizer (same_tokenizer, or `identity=True`) nothing is tokenized or aligned:
    the teacher's arrays are the batch's own prompt and completion arrays, unchanged ([B, P],
    [B, N_s], not P_t / N_t), and chunk n is token n wherever the completion mask is set, so
    the objectives reduce exactly to today's same-tokenizer ones."""

    def __init__(
        self,
        student_tokenizer,
        teacher_tokenizer,
        prompts: Sequence[str | list[dict]],
        *,
        student_stop_ids: Sequence[int],
        teacher_stop_id: int,
        teacher_pad_id: int,
        student_completion_len: int,
        teacher_completion_len: int,
        teacher_prompt_len: int,
        prompt_overflow: str = "truncate_left",
        identity: bool | None = None,
    ):
        if identity is None:
            identity = same_tokenizer(student_tokenizer, teacher_tokenizer)
        self.identity = bool(identity)
        self.n_s, self.n_t = int(student_completion_len), int(teacher_completion_len)
        self.num_prompts = len(prompts)
        self.truncated_prompts = 0
        if self.identity:  # the teacher reads the student's own arrays: nothing to precompute
            self.num_chunks_max = self.n_s
            self.aligner = self.prompt = self.prompt_mask = None
            return
        self.num_chunks_max = min(self.n_s, self.n_t)
        self.aligner = CompletionAligner(
            student_tokenizer,
            teacher_tokenizer,
            student_stop_ids=student_stop_ids,
            teacher_stop_id=teacher_stop_id,
            teacher_pad_id=teacher_pad_id,
        )
        ids = [teacher_prompt_ids(teacher_tokenizer, p) for p in prompts]
        self.prompt, self.prompt_mask, self.truncated_prompts = pack_teacher_prompts(
            ids, int(teacher_prompt_len), int(teacher_pad_id), prompt_overflow
        )  # [N, P_t] each

    def summary(self) -> str:
        """One log line: which path, the shapes, and the teacher prompts that were cut."""
        if self.identity:
            return "[teacher view] one tokenizer: the teacher reads the student's ids"
        return (
            f"[teacher view] {self.num_prompts} teacher prompts of <= {self.prompt.shape[1]} "
            f"tokens ({self.truncated_prompts} cut to fit), completions of {self.n_t} teacher "
            f"tokens, <= {self.num_chunks_max} chunks per row"
        )

    def __call__(
        self,
        index: np.ndarray,
        completion: np.ndarray,
        completion_mask: np.ndarray,
        *,
        prompt: np.ndarray | None = None,
        prompt_mask: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(arrays to add to the batch, the aligner's stats) for the rows `index` [B] (positions
        in `prompts`) whose sampled completions are `completion` [B, N_s] with
        `completion_mask` [B, N_s] (True up to and including the first stop token, as the
        sampler returns them). `prompt` [B, P] / `prompt_mask` [B, P]: the batch's own, needed
        (and only read) with one tokenizer."""
        completion = np.asarray(completion)
        mask = np.asarray(completion_mask, bool)  # [B, N_s]
        index = np.asarray(index, np.int64)  # [B]
        if completion.shape != mask.shape or completion.shape != (len(index), self.n_s):
            raise ValueError(
                f"completion {completion.shape} and its mask {mask.shape} must be "
                f"[B={len(index)}, N_s={self.n_s}]"
            )
        if self.identity:
            return self._identity(completion, mask, prompt, prompt_mask)
        if index.size and (index.min() < 0 or index.max() >= self.num_prompts):
            raise ValueError(f"example indices must lie in [0, {self.num_prompts})")
        out = self.aligner.align(completion, mask, self.n_t)
        check_chunks(out.student_chunks, out.teacher_chunks, self.num_chunks_max)
        arrays = {
            "teacher_prompt": self.prompt[index],  # [B, P_t]
            "teacher_prompt_mask": self.prompt_mask[index],  # [B, P_t]
            "teacher_completion": out.teacher_ids,  # [B, N_t]
            "teacher_completion_mask": out.teacher_mask,  # [B, N_t]
            "student_chunks": out.student_chunks,  # [B, N_s]
            "teacher_chunks": out.teacher_chunks,  # [B, N_t]
        }
        return arrays, dict(out.stats)

    def _identity(
        self,
        completion: np.ndarray,
        mask: np.ndarray,
        prompt: np.ndarray | None,
        prompt_mask: np.ndarray | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """One tokenizer: chunk n = token n under the mask (what the aligner gives the same
        tokenizer on text it can read back, without the cost or its masked corner cases)."""
        if prompt is None or prompt_mask is None:
            raise ValueError("with one tokenizer the teacher reads the batch's own prompt: pass it")
        positions = np.arange(self.n_s, dtype=np.int32)[None, :]  # [1, N_s]
        chunks = np.where(mask, positions, -1).astype(np.int32)  # [B, N_s]
        arrays = {
            "teacher_prompt": prompt,
            "teacher_prompt_mask": prompt_mask,
            "teacher_completion": completion,
            "teacher_completion_mask": mask,
            "student_chunks": chunks,
            "teacher_chunks": chunks.copy(),
        }
        tokens = int(mask.sum())
        stats = {
            "mismatched_rows": 0,
            "masked_student_tokens": 0,
            "masked_teacher_tokens": 0,
            "truncated_rows": 0,
            "truncated_student_tokens": 0,
            "student_tokens": tokens,
            "aligned_tokens": tokens,
            "aligned_fraction": 1.0,
            "chunks": tokens,
        }
        return arrays, stats
