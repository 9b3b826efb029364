"""The host-side batch builder of cross-tokenizer runs (gkd_jax/training/teacher_view.py): the
teacher's prompts (its template, left-padded as pipeline.pack pads), its tokens of the student's
completions and both sides' chunks, the same-tokenizer shortcut, and the vocabulary map.

Tiny tokenizers built with the `tokenizers` library (tests/test_token_alignment.py's; no
downloads); the `real` tests run SmolLM2-135M-Instruct (student) against Gemma 3 270M."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from real_models import real_model_dir
from test_token_alignment import (
    REAL_TEXTS,
    batch,
    byte_level_bpe,
    gemma_like_bpe,
    random_text,
    sampled_ids,
)
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from gkd_jax.data.pipeline import pack
from gkd_jax.data.token_alignment import teacher_prompt_ids
from gkd_jax.data.token_bytes import prefix_free_encoder, token_bytes
from gkd_jax.training.teacher_view import (
    TEACHER_VIEW_KEYS,
    TeacherView,
    build_vocab_map,
    same_tokenizer,
    teacher_lengths,
)

TEMPLATE = (  # a Gemma-like chat template over the tiny tokenizer's specials
    "<bos>{% for m in messages %}{{ m.role }}: {{ m.content }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}model:{% endif %}"
)
N_S, N_T, P_T = 24, 40, 96


@pytest.fixture(scope="module")
def toks() -> dict[str, PreTrainedTokenizerFast]:
    teacher = gemma_like_bpe()
    teacher.chat_template = TEMPLATE
    return {"student": byte_level_bpe(300), "teacher": teacher, "other": byte_level_bpe(700)}


def prompts(n: int, seed: int) -> list:
    """Chat messages and plain texts, as a split may hold them."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        text = random_text(rng, rng.randint(1, 6))
        out.append(text if k % 3 == 0 else [{"role": "user", "content": text}])
    return out


def completions(tok, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled-like completions [n, N_S] (cut at random places, some stopping)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        row = sampled_ids(tok, random_text(rng, rng.randint(1, 16)), rng)[: N_S - 1]
        rows.append(row + [tok.eos_token_id] if k % 2 else row)
    ids, mask = batch(rows, tok.pad_token_id, width=N_S)
    return ids.astype(np.int32), mask


def view(toks, texts, **kw) -> TeacherView:
    s_tok, t_tok = toks["student"], toks[kw.pop("teacher", "teacher")]
    args = dict(
        student_stop_ids=[s_tok.eos_token_id],
        teacher_stop_id=t_tok.convert_tokens_to_ids("<end_of_turn>"),
        teacher_pad_id=t_tok.pad_token_id,
        student_completion_len=N_S,
        teacher_completion_len=N_T,
        teacher_prompt_len=P_T,
    )
    return TeacherView(s_tok, t_tok, texts, **(args | kw))


def rendered(tok, prompt) -> str:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_chunk_bytes(v: TeacherView, ids, arrays) -> None:
    """Per row: chunks 0..n-1 on both sides, and each chunk the same bytes on both (the stop
    chunk: the student's stop token against the teacher's)."""
    al = v.aligner
    for b in range(len(ids)):
        s_c, t_c = arrays["student_chunks"][b], arrays["teacher_chunks"][b]
        n = int(s_c.max(initial=-1)) + 1
        assert set(s_c[s_c >= 0].tolist()) == set(t_c[t_c >= 0].tolist()) == set(range(n))
        for c in range(n):
            s_tok = ids[b][s_c == c]
            t_tok = arrays["teacher_completion"][b][t_c == c]
            if t_tok[-1] == al.teacher_stop_id:
                assert len(s_tok) == len(t_tok) == 1 and s_tok[0] in al.stop_ids
                continue
            text = b"".join(al.student_bytes[i] for i in s_tok)
            assert text and text == b"".join(al.teacher_bytes[i] for i in t_tok)


def test_shapes_and_padding(toks):
    texts = prompts(12, seed=0)
    v = view(toks, texts)
    assert not v.identity and v.num_chunks_max == min(N_S, N_T)
    ids, mask = completions(toks["student"], 8, seed=1)
    index = np.arange(8)
    arrays, stats = v(index, ids, mask)
    assert set(arrays) == set(TEACHER_VIEW_KEYS)
    shapes = {
        "teacher_prompt": (8, P_T),
        "teacher_prompt_mask": (8, P_T),
        "teacher_completion": (8, N_T),
        "teacher_completion_mask": (8, N_T),
        "student_chunks": (8, N_S),
        "teacher_chunks": (8, N_T),
    }
    for key, shape in shapes.items():
        assert arrays[key].shape == shape, key
        kind = bool if key.endswith("mask") else np.int32
        assert arrays[key].dtype == kind, key
    # Left padding exactly as pipeline.pack lays out the student's prompts.
    t_tok = toks["teacher"]
    want = [teacher_prompt_ids(t_tok, texts[i]) for i in index]
    packed = pack(
        want, [[1]] * 8, max_prompt_len=P_T, max_completion_len=1, pad_id=t_tok.pad_token_id
    )
    np.testing.assert_array_equal(arrays["teacher_prompt"], packed["prompt"])
    np.testing.assert_array_equal(arrays["teacher_prompt_mask"], packed["prompt_mask"])
    # The teacher's completion: right-padded with its pad id, mask a prefix.
    t_mask = arrays["teacher_completion_mask"]
    assert (np.diff(t_mask.astype(int), axis=1) <= 0).all()
    assert (arrays["teacher_completion"][~t_mask] == t_tok.pad_token_id).all()
    assert (arrays["teacher_chunks"][~t_mask] == -1).all()
    assert (arrays["student_chunks"][~mask] == -1).all()
    assert stats["aligned_fraction"] > 0.9 and stats["student_tokens"] == mask.sum()


def test_teacher_prompts_decode_to_the_template_rendering(toks):
    texts = prompts(12, seed=2)
    v = view(toks, texts, teacher_prompt_len=160)
    assert v.truncated_prompts == 0
    t_tok = toks["teacher"]
    for i, p in enumerate(texts):
        ids = v.prompt[i][v.prompt_mask[i]]
        assert ids.tolist() == teacher_prompt_ids(t_tok, p)
        assert t_tok.decode(ids) == rendered(t_tok, p)


def test_chunk_bytes_equal_on_both_sides(toks):
    v = view(toks, prompts(16, seed=3))
    ids, mask = completions(toks["student"], 16, seed=4)
    arrays, stats = v(np.arange(16), ids, mask)
    check_chunk_bytes(v, ids, arrays)
    # The teacher's completion is its own tokenization of the text (+ its stop token).
    enc = prefix_free_encoder(toks["teacher"])
    stop = v.aligner.teacher_stop_id
    for b in range(16):
        text = b"".join(v.aligner.student_bytes[i] for i in ids[b][mask[b]])  # specials: b""
        # A row cut mid-character reads as U+FFFD to the teacher, as the aligner encodes it.
        t_ids = enc.encode(text.decode(errors="replace"), add_special_tokens=False).ids
        t_ids += [stop] if mask[b].sum() and ids[b][mask[b]][-1] in v.aligner.stop_ids else []
        got = arrays["teacher_completion"][b][arrays["teacher_completion_mask"][b]]
        assert got.tolist() == t_ids[:N_T]


def test_example_indices_select_their_prompts(toks):
    texts = prompts(20, seed=5)
    v = view(toks, texts, teacher_prompt_len=160)
    index = np.array([17, 3, 3, 0, 19, 8])
    ids, mask = completions(toks["student"], len(index), seed=6)
    arrays, _ = v(index, ids, mask)
    t_tok = toks["teacher"]
    for b, i in enumerate(index):
        row = arrays["teacher_prompt"][b][arrays["teacher_prompt_mask"][b]]
        assert t_tok.decode(row) == rendered(t_tok, texts[i])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 20\)"):
        v(np.array([0, 1, 2, 3, 4, 20]), ids, mask)


def test_long_prompts_are_cut_and_counted_or_refused(toks):
    texts = prompts(9, seed=7)
    lengths = [len(teacher_prompt_ids(toks["teacher"], p)) for p in texts]
    p_t = sorted(lengths)[4]
    v = view(toks, texts, teacher_prompt_len=p_t)
    assert v.truncated_prompts == sum(n > p_t for n in lengths) > 0
    full = view(toks, texts, teacher_prompt_len=max(lengths))
    for i, n in enumerate(lengths):  # truncate_left keeps the end: the generation prompt
        np.testing.assert_array_equal(v.prompt[i][v.prompt_mask[i]], full.prompt[i][-n:][-p_t:])
    assert "cut to fit" in v.summary()
    with pytest.raises(ValueError, match=r"longer than data.teacher_max_prompt_len=.*Raise"):
        view(toks, texts, teacher_prompt_len=p_t, prompt_overflow="error")


def test_one_tokenizer_gives_identity_chunks_and_the_students_arrays(toks):
    s_tok = toks["student"]
    copy = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(s_tok.backend_tokenizer.to_str()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    assert same_tokenizer(s_tok, copy) and same_tokenizer(s_tok, s_tok)
    assert not same_tokenizer(s_tok, toks["other"]) and not same_tokenizer(s_tok, toks["teacher"])
    v = TeacherView(
        s_tok, copy, prompts(4, seed=8), student_stop_ids=[s_tok.eos_token_id],
        teacher_stop_id=copy.eos_token_id, teacher_pad_id=copy.pad_token_id,
        student_completion_len=N_S, teacher_completion_len=N_T, teacher_prompt_len=P_T,
    )  # fmt: skip
    assert v.identity and v.aligner is None and v.num_chunks_max == N_S
    ids, mask = completions(s_tok, 6, seed=9)
    prompt = np.full((6, 5), 7, np.int32)
    prompt_mask = np.ones((6, 5), bool)
    arrays, stats = v(np.arange(6), ids, mask, prompt=prompt, prompt_mask=prompt_mask)
    assert arrays["teacher_prompt"] is prompt and arrays["teacher_prompt_mask"] is prompt_mask
    assert arrays["teacher_completion"] is ids and arrays["teacher_completion_mask"] is mask
    want = np.where(mask, np.arange(N_S), -1)
    np.testing.assert_array_equal(arrays["student_chunks"], want)
    np.testing.assert_array_equal(arrays["teacher_chunks"], want)
    assert arrays["student_chunks"].dtype == np.int32
    assert stats["aligned_fraction"] == 1.0 and stats["chunks"] == mask.sum()
    with pytest.raises(ValueError, match="batch's own prompt"):
        v(np.arange(6), ids, mask)
    # The aligner on one tokenizer gives the same chunks where the text reads back exactly.
    forced = view(
        toks, ["the", "answer"], teacher="student", identity=False,
        teacher_stop_id=s_tok.eos_token_id, teacher_pad_id=s_tok.pad_token_id,
    )  # fmt: skip
    enc = prefix_free_encoder(s_tok)
    rng = random.Random(10)
    texts = (enc.encode(random_text(rng, 6)).ids for _ in range(1000))
    rows = [r for r in texts if len(r) < N_S][:6]  # whole texts: no character cut at the end
    ids, mask = batch([r + [s_tok.eos_token_id] for r in rows], s_tok.pad_token_id, width=N_S)
    aligned, _ = forced(np.arange(6) % 2, ids, mask)
    np.testing.assert_array_equal(aligned["student_chunks"], np.where(mask, np.arange(N_S), -1))


def test_vocab_map(toks):
    s_tok, t_tok = toks["student"], toks["teacher"]
    stop_s, stop_t = s_tok.eos_token_id, t_tok.convert_tokens_to_ids("<end_of_turn>")
    v_s, v_t = len(s_tok) - 10, len(t_tok) + 6  # a table cut short, one padded
    s_ids, t_ids = build_vocab_map(
        s_tok, t_tok, student_stop_id=stop_s, teacher_stop_id=stop_t,
        student_vocab=v_s, teacher_vocab=v_t,
    )  # fmt: skip
    assert s_ids.dtype == t_ids.dtype == np.int32 and (s_ids[-1], t_ids[-1]) == (stop_s, stop_t)
    assert s_ids.max() < v_s and t_ids.max() < v_t
    sb, tb = token_bytes(s_tok), token_bytes(t_tok)
    assert all(sb[i] == tb[j] and sb[i] for i, j in zip(s_ids[:-1], t_ids[:-1], strict=True))
    assert len(s_ids) > 50
    same_s, same_t = build_vocab_map(
        s_tok, s_tok, student_stop_id=stop_s, teacher_stop_id=stop_s,
        student_vocab=len(s_tok), teacher_vocab=len(s_tok) + 4,
    )  # fmt: skip
    np.testing.assert_array_equal(same_s, np.arange(len(s_tok)))
    np.testing.assert_array_equal(same_t, np.arange(len(s_tok)))


def test_teacher_lengths():
    from gkd_jax.config.defaults import base_config

    c = base_config()
    assert teacher_lengths(c) == (c.data.max_prompt_len, 2 * c.max_new_tokens)
    c.data.teacher_max_prompt_len, c.gkd.teacher_max_new_tokens = 80, 70
    assert teacher_lengths(c) == (80, 70)


# ------------------------------------------------------------------------------ the real pair
CHAT = [
    "What is 7 plus 5?",
    "Name a fruit that is yellow.",
    "Rewrite this sentence in the past tense: the cat sleeps every day.",
    "Write a haiku about the sea 🌊 in two languages: English and 日本語.",
]


# Gemma 3's chat template (its instruction-tuned release's, without the system-turn handling):
# the cached Gemma 3 270M is the base model, whose tokenizer has none.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def real():
    from gkd_jax.data.hf_tokenizer import load_hf_tokenizer

    return {name: load_hf_tokenizer(real_model_dir(name)) for name in ("smollm2", "gemma3")}


def real_view(real, prompts_, n_s=128, n_t=256, p_t=64) -> TeacherView:
    s_tok, t_tok = real["smollm2"], real["gemma3"]
    return TeacherView(
        s_tok, t_tok, prompts_,
        student_stop_ids=[s_tok.convert_tokens_to_ids("<|im_end|>")],
        teacher_stop_id=t_tok.convert_tokens_to_ids("<end_of_turn>"),
        teacher_pad_id=t_tok.pad_token_id, student_completion_len=n_s,
        teacher_completion_len=n_t, teacher_prompt_len=p_t,
    )  # fmt: skip


def real_batch(tok, n: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for k in range(n):
        row = sampled_ids(tok, " ".join(rng.sample(REAL_TEXTS, 3)), rng)[: width - 1]
        rows.append(row + [stop] if k % 2 else row)
    ids, mask = batch(rows, tok.pad_token_id, width=width)
    return ids.astype(np.int32), mask


@pytest.mark.real
def test_real_pair_teacher_view(real):
    t_tok = real["gemma3"]
    assert not t_tok.chat_template  # the base model: a plain prompt, after its BOS
    plain = real_view(real, CHAT)
    for i, text in enumerate(CHAT):
        ids = plain.prompt[i][plain.prompt_mask[i]]
        assert ids[0] == t_tok.bos_token_id and t_tok.decode(ids[1:]) == text
    messages = [[{"role": "user", "content": c}] for c in CHAT]
    t_tok.chat_template = GEMMA_TEMPLATE
    try:
        v = real_view(real, messages)
    finally:
        t_tok.chat_template = None
    assert not v.identity and v.truncated_prompts == 0
    for i, text in enumerate(CHAT):
        ids = v.prompt[i][v.prompt_mask[i]]
        want = f"<bos><start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
        assert t_tok.decode(ids) == want and ids[0] == t_tok.bos_token_id
    ids, mask = real_batch(real["smollm2"], 8, 128, seed=1)
    arrays, stats = v(np.arange(8) % len(CHAT), ids, mask)
    check_chunk_bytes(v, ids, arrays)
    assert stats["aligned_fraction"] > 0.99 and stats["truncated_rows"] == 0


@pytest.mark.real
def test_real_pair_builder_speed(real):
    """Host-side cost per batch of 64 x 128 sampled tokens, the teacher prompts precomputed."""
    texts = CHAT * 16
    start = time.perf_counter()
    v = real_view(real, texts)
    built = time.perf_counter() - start
    ids, mask = real_batch(real["smollm2"], 64, 128, seed=2)
    index = np.arange(64)
    v(index, ids, mask)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        v(index, ids, mask)
        times.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(times))
    print(
        f"\nteacher view, 64 x 128 tokens, SmolLM2 -> Gemma 3: {ms:.1f} ms per batch (median); "
        f"built in {built:.2f} s for {len(texts)} prompts"
    )
    assert ms < 300
