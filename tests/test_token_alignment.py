"""Cross-tokenizer alignment (gkd_jax/data/token_alignment.py, token_bytes.py) against a
brute-force reference: every cumulative byte offset of both tokenizations enumerated, the common
ones intersected, each token put in the span its end falls in.

The tokenizers are tiny and built here with the `tokenizers` library (no downloads): byte-level
BPEs of two sizes (different merges), a Gemma-like SentencePiece BPE with byte fallback and a
Llama/T5-like Unigram with byte fallback and a Metaspace dummy prefix. The `real` tests run the
same checks on SmolLM2-135M-Instruct (byte-level BPE) and Gemma 3 270M (SentencePiece)."""

from __future__ import annotations

import itertools
import json
import random
import time

import numpy as np
import pytest
from real_models import real_model_dir
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from gkd_jax.data.token_alignment import CompletionAligner, diff_chunks, teacher_prompt_ids
from gkd_jax.data.token_bytes import (
    byte_level_chars,
    prefix_free_encoder,
    special_ids,
    token_bytes,
    tokenizer_family,
    vocab_map,
)

WORDS = (
    "the of and to in is that for it with as was on be by this are from at or an have not but "
    "which one all were can there their has more if will some would other into time only new "
    "number answer total each step so then let compute apples cost def return print class self "
    "value list dict sum range café naïve résumé über"
).split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>"]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        words += [str(rng.randint(0, 999)), rng.choice(["=", "+", "*", ":", "(x)", ".", ","])]
        rng.shuffle(words)
        lines.append(" ".join(words) + rng.choice(["", ".", "\n", "\n\n", "  "]))
    return lines


def wrap(tok: Tokenizer, **tokens) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


def byte_level_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.train_from_iterator(corpus(), trainer)
    return wrap(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>")


def with_byte_pieces(pieces: list[str]) -> list[str]:
    """The specials, the 256 byte-fallback pieces, then the trained pieces."""
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    return SPECIALS + byte_pieces + [p for p in pieces if p not in SPECIALS]


def gemma_like_bpe() -> PreTrainedTokenizerFast:
    """Gemma 3's pipeline: ' ' -> '▁' normalizer, no dummy prefix, BPE with byte fallback, and a
    non-special added token ("\\n\\n") as Gemma has."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS, limit_alphabet=60)
    trained.train_from_iterator(corpus(seed=1), trainer)
    spec = trained.model.__getstate__()

    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(spec)["merges"]
    ]
    vocab = {p: i for i, p in enumerate(with_byte_pieces(list(trained.get_vocab())))}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken("\n\n", special=False, normalized=False)])
    return wrap(tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>")


def unigram_with_prefix() -> PreTrainedTokenizerFast:
    """Llama 2 / T5 style: a Metaspace pre-tokenizer that prepends '▁' to the text (the dummy
    prefix), a Unigram model with byte fallback, a Metaspace decoder that strips it again."""
    meta = dict(replacement="▁", prepend_scheme="first")
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(**meta)
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=SPECIALS, unk_token="<unk>", max_piece_length=8
    )
    trained.train_from_iterator(corpus(seed=2), trainer)

    scores = dict(map(tuple, json.loads(trained.model.__getstate__())["vocab"]))
    pieces = with_byte_pieces(list(scores))
    vocab = [(p, scores.get(p, -30.0) if p not in SPECIALS else 0.0) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIALS.index("<unk>"), byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(**meta)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(**meta)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return wrap(tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def toks() -> dict[str, PreTrainedTokenizerFast]:
    return {
        "bl_small": byte_level_bpe(300),
        "bl_large": byte_level_bpe(700),
        "gemma_like": gemma_like_bpe(),
        "unigram_prefix": unigram_with_prefix(),
    }


# ------------------------------------------------------------------------------ random text
POOLS = {
    "word": WORDS,
    "digits": ["0", "7", "42", "314159", "2024", "1,000", "3.14"],
    "emoji": ["😀", "👍🏽", "👩‍👩‍👧", "🇫🇷", "✨", "🤖"],
    "cjk": ["中文", "日本語", "한국어", "字", "漢字かな"],
    "combining": ["e\u0301", "n\u0303", "a\u0308\u0301", "\u0301"],
    "space": [" ", "  ", "   ", "\t", " \t ", "\u00a0"],
    "newline": ["\n", "\n\n", "\n\n\n", "\r\n", " \n"],
    "punct": [".", ",", "!", "?", "(", ")", "=", "+", "*", "-", "'", '"', "{", "}", "#"],
    "rare": ["ʬ", "₿", "Ꙭ", "𝔘", "ǅ"],  # no piece in any tiny vocabulary: byte fallback only
}


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(POOLS[rng.choice(list(POOLS))]) for _ in range(n))


def sampled_ids(tok, text: str, rng: random.Random) -> list[int]:
    """A valid but often non-canonical tokenization of `text` (as a sampling student produces):
    the text cut at random character positions, each piece encoded alone without a prefix."""
    enc = prefix_free_encoder(tok)
    cuts = sorted(rng.sample(range(1, len(text)), min(3, len(text) - 1))) if len(text) > 1 else []
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [i for p in pieces for i in enc.encode(p, add_special_tokens=False).ids]


def batch(rows: list[list[int]], pad: int, width: int | None = None):
    width = width or max(map(len, rows), default=1)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), bool)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = row, True
    return ids, mask


# ------------------------------------------------------------------------------ the reference
def reference(s_bytes, t_bytes, teacher_encode, row, stops, teacher_stop):
    """Student chunk per position, teacher ids and chunks, chunk count, of one row, by brute
    force: every cumulative offset of both sides listed, the common ones intersected."""
    stop_at = next((k for k, i in enumerate(row) if i in stops), None)
    text_ids = row[:stop_at] if stop_at is not None else row
    text = b"".join(s_bytes[i] for i in text_ids)
    t_ids = teacher_encode(text.decode())
    assert b"".join(t_bytes[i] for i in t_ids) == text, "the reference needs matching bytes"
    s_ends = list(itertools.accumulate(len(s_bytes[i]) for i in text_ids))
    t_ends = list(itertools.accumulate(len(t_bytes[i]) for i in t_ids))
    common = sorted(set(s_ends) & set(t_ends))
    s_chunks = [sum(c < e for c in common) for e in s_ends]
    t_chunks = [sum(c < e for c in common) for e in t_ends]
    n = len(common)
    if stop_at is not None:
        s_chunks.append(n)
        t_ids, t_chunks, n = [*t_ids, teacher_stop], [*t_chunks, n], n + 1
    return s_chunks, t_ids, t_chunks, n


def check_against_reference(student, teacher, rows, n_t=512):
    stops = {student.eos_token_id}
    teacher_stop = teacher.eos_token_id
    aligner = CompletionAligner(
        student, teacher, student_stop_ids=stops, teacher_stop_id=teacher_stop
    )
    enc = prefix_free_encoder(teacher)
    ids, mask = batch(rows, student.pad_token_id)
    out = aligner.align(ids, mask, n_t)
    for b, row in enumerate(rows):
        s_ref, t_ref, tc_ref, n_ref = reference(
            aligner.student_bytes,
            aligner.teacher_bytes,
            lambda s: enc.encode(s, add_special_tokens=False).ids,
            row,
            stops,
            teacher_stop,
        )
        np.testing.assert_array_equal(out.student_chunks[b, : len(row)], s_ref)
        assert (out.student_chunks[b, len(row) :] == -1).all()
        np.testing.assert_array_equal(out.teacher_ids[b, : len(t_ref)], t_ref)
        np.testing.assert_array_equal(out.teacher_chunks[b, : len(t_ref)], tc_ref)
        assert (out.teacher_chunks[b, len(t_ref) :] == -1).all()
        assert out.teacher_mask[b].sum() == len(t_ref) and out.num_chunks[b] == n_ref
    assert out.stats["aligned_fraction"] == 1.0 and out.stats["mismatched_rows"] == 0
    return out


def check_invariants(out, aligner, ids, mask):
    """Whatever the input: chunk ids 0..n-1 in order on both sides, each chunk >= 1 token on each
    side, and the bytes of a chunk identical on both sides (the stop chunk: one stop token each)."""
    for b in range(len(ids)):
        n = int(out.num_chunks[b])
        s_c, t_c = out.student_chunks[b], out.teacher_chunks[b]
        for side in (s_c[s_c >= 0], t_c[t_c >= 0]):
            assert (np.diff(side) >= 0).all() and set(side.tolist()) == set(range(n))
        assert ((s_c >= 0) <= mask[b]).all() and ((t_c >= 0) <= out.teacher_mask[b]).all()
        for c in range(n):
            s_tok, t_tok = ids[b][s_c == c], out.teacher_ids[b][t_c == c]
            if t_tok[-1] == aligner.teacher_stop_id and np.isin(s_tok, aligner.stop_ids).all():
                assert len(s_tok) == len(t_tok) == 1
                continue
            s_text = b"".join(aligner.student_bytes[i] for i in s_tok)
            assert s_text == b"".join(aligner.teacher_bytes[i] for i in t_tok) and s_text


PAIRS = [
    ("bl_small", "gemma_like"),
    ("gemma_like", "bl_large"),
    ("bl_small", "bl_large"),
    ("unigram_prefix", "gemma_like"),
    ("bl_large", "unigram_prefix"),
]


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_alignment_matches_brute_force(toks, student, teacher):
    s_tok, t_tok = toks[student], toks[teacher]
    rng = random.Random(hash((student, teacher)) % 1000)
    rows = []
    for k in range(48):
        row = sampled_ids(s_tok, random_text(rng, rng.randint(1, 30)), rng)
        rows.append(row + [s_tok.eos_token_id] if k % 3 else row)
    rows += [[], [s_tok.eos_token_id]]  # nothing at all; a reply that stops at once
    out = check_against_reference(s_tok, t_tok, rows)
    ids, mask = batch(rows, s_tok.pad_token_id)
    aligner = CompletionAligner(
        s_tok, t_tok, student_stop_ids=[s_tok.eos_token_id], teacher_stop_id=t_tok.eos_token_id
    )
    check_invariants(out, aligner, ids, mask)
    assert out.stats["chunks"] < out.stats["student_tokens"]  # different merges: some merge


@pytest.mark.parametrize("name", ["bl_small", "gemma_like", "unigram_prefix"])
def test_same_tokenizer_one_chunk_per_token(toks, name):
    tok = toks[name]
    rng = random.Random(3)
    enc = prefix_free_encoder(tok)
    rows = [enc.encode(random_text(rng, 20), add_special_tokens=False).ids for _ in range(16)]
    rows = [r + [tok.eos_token_id] for r in rows]
    out = check_against_reference(tok, tok, rows)
    for b, row in enumerate(rows):
        np.testing.assert_array_equal(out.student_chunks[b, : len(row)], np.arange(len(row)))
        np.testing.assert_array_equal(out.teacher_ids[b, : len(row) - 1], row[:-1])
        np.testing.assert_array_equal(out.teacher_chunks[b, : len(row)], np.arange(len(row)))


def test_diff_chunks_equals_the_reference_when_bytes_match(toks):
    """The slow path (a diff) and the fast one agree wherever the bytes are equal."""
    s_tok, t_tok = toks["bl_small"], toks["gemma_like"]
    sb, tb = token_bytes(s_tok), token_bytes(t_tok)
    rng = random.Random(4)
    for _ in range(40):
        text = random_text(rng, rng.randint(1, 25))
        s_ids = sampled_ids(s_tok, text, rng)
        t_ids = prefix_free_encoder(t_tok).encode(text, add_special_tokens=False).ids
        s_ref, _, t_ref, n_ref = reference(sb, tb, lambda _, t=t_ids: t, s_ids, set(), None)
        got = diff_chunks([sb[i] for i in s_ids], [tb[i] for i in t_ids])
        assert got == (s_ref, t_ref, n_ref)


# ------------------------------------------------------------------------------ mismatches
def aligner_for(student, teacher, **kw):
    return CompletionAligner(
        student,
        teacher,
        student_stop_ids=[student.eos_token_id],
        teacher_stop_id=teacher.eos_token_id,
        **kw,
    )


def align_rows(aligner, rows, pad, n_t=256, strict=False):
    ids, mask = batch(rows, pad)
    out = aligner.align(ids, mask, n_t, strict=strict)
    check_invariants(out, aligner, ids, mask)
    return out


def test_invalid_utf8_is_masked_not_misaligned(toks):
    """A byte-level student can sample the first three bytes of a four-byte emoji: the teacher
    reads U+FFFD there. That span is masked; the text around it stays aligned."""
    s_tok, t_tok = toks["bl_small"], toks["gemma_like"]
    enc = prefix_free_encoder(s_tok)
    emoji = enc.encode("😀", add_special_tokens=False).ids
    assert len(emoji) == 4  # one token per byte in the small vocabulary
    head = enc.encode("the answer is", add_special_tokens=False).ids
    tail = enc.encode(" 42 then", add_special_tokens=False).ids
    row = head + emoji[:3] + tail + [s_tok.eos_token_id]
    aligner = aligner_for(s_tok, t_tok)
    out = align_rows(aligner, [row], s_tok.pad_token_id)
    chunks = out.student_chunks[0, : len(row)]
    assert out.stats["mismatched_rows"] == 1
    assert 3 <= out.stats["masked_student_tokens"] <= 5
    assert (chunks[len(head) : len(head) + 3] == -1).all()
    assert (chunks[: len(head) - 1] >= 0).all() and chunks[-1] == out.num_chunks[0] - 1
    assert out.stats["aligned_tokens"] == len(row) - out.stats["masked_student_tokens"]
    strict = align_rows(aligner, [row], s_tok.pad_token_id, strict=True)
    assert (strict.student_chunks[0, len(head) :] == -1).all()  # the stop chunk too
    np.testing.assert_array_equal(
        strict.student_chunks[0, : len(head) - 1], chunks[: len(head) - 1]
    )


def test_student_special_mid_completion_is_masked(toks):
    s_tok, t_tok = toks["gemma_like"], toks["bl_large"]
    enc = prefix_free_encoder(s_tok)
    a = enc.encode("the answer", add_special_tokens=False).ids
    b = enc.encode(" is 42.", add_special_tokens=False).ids
    special = s_tok.convert_tokens_to_ids("<bos>")
    row = a + [special] + b + [s_tok.eos_token_id]
    out = align_rows(aligner_for(s_tok, t_tok), [row], s_tok.pad_token_id)
    assert out.student_chunks[0, len(a)] == -1 and out.stats["masked_student_tokens"] >= 1
    assert out.student_chunks[0, len(row) - 1] == out.num_chunks[0] - 1  # the stop chunk stays


@pytest.mark.parametrize(
    "text,teacher",
    [
        ("ok <eos> done", "gemma_like"),  # the teacher reads its special token, not text
        ("ok <|im_end|> done", "bl_large"),
        ("a ▁ b", "gemma_like"),  # a literal '▁' decodes as a space
    ],
)
def test_text_the_teacher_cannot_reproduce_is_masked(toks, text, teacher):
    student = "bl_small" if teacher == "gemma_like" else "gemma_like"
    s_tok, t_tok = toks[student], toks[teacher]
    row = prefix_free_encoder(s_tok).encode(text, add_special_tokens=False).ids
    out = align_rows(aligner_for(s_tok, t_tok), [row], s_tok.pad_token_id)
    assert out.stats["mismatched_rows"] == 1 and out.stats["masked_student_tokens"] > 0
    assert out.stats["masked_teacher_tokens"] > 0 and out.num_chunks[0] >= 1


def test_normalizing_teacher_is_masked(toks):
    """A teacher whose normalizer rewrites characters (NFKC: 'ﬁ' -> 'fi')."""
    teacher = toks["gemma_like"]
    backend = Tokenizer.from_str(teacher.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" ", "▁")])
    nfkc = wrap(backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    s_tok = toks["bl_large"]
    row = prefix_free_encoder(s_tok).encode("the ﬁle is 42", add_special_tokens=False).ids
    out = align_rows(aligner_for(s_tok, nfkc), [row], s_tok.pad_token_id)
    assert out.stats["mismatched_rows"] == 1 and 0 < out.stats["masked_student_tokens"] < len(row)


@pytest.mark.parametrize("student,teacher", PAIRS[:3])
def test_random_ids_keep_the_invariants(toks, student, teacher):
    """Ids drawn uniformly from the student's vocabulary and past it: invalid UTF-8, specials
    and ids the tokenizer lacks mid-row."""
    s_tok, t_tok = toks[student], toks[teacher]
    rng = np.random.default_rng(5)
    rows = [rng.integers(0, len(s_tok) + 5, rng.integers(0, 40)).tolist() for _ in range(40)]
    aligner = aligner_for(s_tok, t_tok)
    out = align_rows(aligner, rows, s_tok.pad_token_id)
    assert out.stats["masked_student_tokens"] > 0 and out.stats["aligned_fraction"] > 0.2
    strict = align_rows(aligner, rows, s_tok.pad_token_id, strict=True)
    assert strict.stats["aligned_tokens"] < out.stats["aligned_tokens"]


def test_truncated_teacher_rows_drop_whole_chunks(toks):
    s_tok, t_tok = toks["bl_large"], toks["gemma_like"]
    rng = random.Random(6)
    rows = [sampled_ids(s_tok, random_text(rng, 30), rng) + [s_tok.eos_token_id] for _ in range(8)]
    aligner = aligner_for(s_tok, t_tok)
    ids, mask = batch(rows, s_tok.pad_token_id)
    full = aligner.align(ids, mask, 512)
    n_t = 12
    cut = aligner.align(ids, mask, n_t)
    check_invariants(cut, aligner, ids, mask)
    lengths = full.teacher_mask.sum(axis=1)
    assert cut.stats["truncated_rows"] == (lengths > n_t).sum() > 0
    np.testing.assert_array_equal(cut.teacher_ids, full.teacher_ids[:, :n_t])
    np.testing.assert_array_equal(cut.teacher_mask, full.teacher_mask[:, :n_t])
    for b in range(len(rows)):
        spilled = full.teacher_chunks[b, n_t:]
        keep = spilled[spilled >= 0].min() if (spilled >= 0).any() else full.num_chunks[b]
        assert cut.num_chunks[b] == keep
        expect = np.where(full.student_chunks[b] < keep, full.student_chunks[b], -1)
        np.testing.assert_array_equal(cut.student_chunks[b], expect)
    dropped = (full.student_chunks >= 0).sum() - (cut.student_chunks >= 0).sum()
    assert cut.stats["truncated_student_tokens"] == dropped


def test_prepend_normalizer_prefix_is_turned_off(toks):
    """Llama 2's legacy pipeline: a Prepend('▁') normalizer adds the dummy prefix and a Strip
    decoder drops it. The teacher then encodes a completion without it, as in context."""
    backend = Tokenizer.from_str(toks["gemma_like"].backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    llama = wrap(backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    table = token_bytes(llama)
    ids = llama("the answer", add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids) == b" the answer"
    assert llama.decode(ids) == "the answer"
    free = prefix_free_encoder(llama).encode("the answer", add_special_tokens=False).ids
    assert b"".join(table[i] for i in free) == b"the answer"
    rng = random.Random(11)
    s_tok = toks["bl_small"]
    rows = [sampled_ids(s_tok, random_text(rng, 20), rng) for _ in range(16)]
    check_against_reference(s_tok, llama, rows)


# ------------------------------------------------------------------------------ token bytes
def test_byte_level_table_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_level_chars() == {c: b for b, c in bytes_to_unicode().items()}


@pytest.mark.parametrize("name", ["bl_small", "bl_large", "gemma_like", "unigram_prefix"])
def test_token_bytes_concatenate_to_the_decoded_text(toks, name):
    tok = toks[name]
    table = token_bytes(tok, size=len(tok) + 7)
    assert len(table) == len(tok) + 7 and table[-1] == b""
    assert all(table[i] == b"" for i in special_ids(tok)) and tok.eos_token_id in special_ids(tok)
    rng = random.Random(7)
    for _ in range(100):
        text = random_text(rng, rng.randint(1, 30)).replace("\r", "")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        joined = b"".join(table[i] for i in ids)
        if name == "unigram_prefix" and not text.startswith(" "):
            # The dummy prefix: one more leading space, which decode drops again. (Metaspace adds
            # none to a text that starts with a space, and decode then drops one of the text's.)
            assert joined == b" " + text.encode() and tok.decode(ids) == text
        if name == "unigram_prefix":  # in context (after a prompt) a text has no prefix
            ids = prefix_free_encoder(tok).encode(text, add_special_tokens=False).ids
            assert b"".join(table[i] for i in ids) == text.encode()
        else:
            assert joined == text.encode() == tok.decode(ids).encode()


def test_vocab_map(toks):
    a, b = token_bytes(toks["bl_small"]), token_bytes(toks["gemma_like"])
    s_ids, t_ids = vocab_map(a, b)
    assert s_ids.dtype == t_ids.dtype == np.int32 and len(s_ids) == len(t_ids) > 50
    assert all(a[i] == b[j] and a[i] for i, j in zip(s_ids, t_ids, strict=True))
    assert len({a[i] for i in s_ids}) == len(s_ids)  # each string once
    shared = {x for x in a if x} & {x for x in b if x}
    assert {a[i] for i in s_ids} == shared
    same_s, same_t = vocab_map(a, a)
    text_ids = [i for i, x in enumerate(a) if x]
    np.testing.assert_array_equal(same_s, text_ids)
    np.testing.assert_array_equal(same_t, text_ids)


def test_teacher_prompt_ids(toks):
    tok = toks["gemma_like"]
    assert teacher_prompt_ids(tok, "the answer") == tok("the answer")["input_ids"]
    with pytest.raises(ValueError, match="no chat template"):
        teacher_prompt_ids(tok, [{"role": "user", "content": "hi"}])
    chat = toks["bl_small"]
    chat.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ids = teacher_prompt_ids(chat, "the answer")
    rendered = "<|im_start|>user\nthe answer<|im_end|>\n<|im_start|>assistant\n"
    assert chat.decode(ids) == rendered and ids[0] == chat.convert_tokens_to_ids("<|im_start|>")


# ------------------------------------------------------------------------------ the real pair
REAL_TEXTS = [
    "The river rises in the hills above the town and runs south through farmland, past the old "
    "mill, under three stone bridges and into the estuary, where the tide turns it brackish.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. 48 / 2 = 24 clips in May, so 48 + 24 = 72 clips altogether.\n#### 72",
    "Let x = 3.5. Then 2x^2 - 7x + 1 = 24.5 - 24.5 + 1 = 1, and √16 = 4; π ≈ 3.14159.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) {\n\tprintf("%d\\n", i);\n}',
    "Sure! Here's a haiku 🌸:\n\nSoft petals drifting,\nthe pond holds a paler sky —\n"
    "spring 🐸 hops away.",
    "Die Katze schläft. Le café est très bon. 東京は日本の首都です。 Москва — столица России.",
    "  Indented   text\twith\t\ttabs, trailing spaces   \n\n\n\nand blank lines.",
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n**bold** _italic_ `code` [link](http://x.io/a?b=1&c=2)",
    "Emoji: 👍🏽 👩‍👩‍👧 🇫🇷 ✨🤖 — and combining: e\u0301, n\u0303, Z\u0337\u0335a\u0336lgo.",
]


@pytest.fixture(scope="module")
def real():
    from gkd_jax.data.hf_tokenizer import load_hf_tokenizer

    return {name: load_hf_tokenizer(real_model_dir(name)) for name in ("smollm2", "gemma3")}


def real_aligner(real, student: str, teacher: str) -> CompletionAligner:
    stop = {"smollm2": "<|im_end|>", "gemma3": "<end_of_turn>"}
    s_tok, t_tok = real[student], real[teacher]
    return CompletionAligner(
        s_tok,
        t_tok,
        student_stop_ids=[s_tok.convert_tokens_to_ids(stop[student])],
        teacher_stop_id=t_tok.convert_tokens_to_ids(stop[teacher]),
    )


def real_rows(tok, n: int, width: int, seed: int, stop_id: int) -> list[list[int]]:
    """Realistic completions: REAL_TEXTS (and random strings) run together, tokenized as a sampling
    student might (cut at random places), some ending with the stop token."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        text = " ".join(rng.sample(REAL_TEXTS, 3))
        if k % 4 == 3:
            text = random_text(rng, 60)
        row = sampled_ids(tok, text, rng)[: width - 1]
        rows.append(row + [stop_id] if k % 2 else row)
    return rows


@pytest.mark.real
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_token_bytes_reencode_text_exactly(real, name):
    tok = real[name]
    table = token_bytes(tok)
    assert tokenizer_family(tok) == {"smollm2": "byte_level", "gemma3": "sentencepiece"}[name]
    assert len(table) == {"smollm2": 49152, "gemma3": 262144}[name]
    rng = random.Random(8)
    texts = REAL_TEXTS + [random_text(rng, rng.randint(1, 60)) for _ in range(300)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        joined = b"".join(table[i] for i in ids)
        assert joined == tok.decode(ids).encode() == text.encode(), text


@pytest.mark.real
def test_real_vocab_map(real):
    s_ids, t_ids = vocab_map(token_bytes(real["smollm2"]), token_bytes(real["gemma3"]))
    print(f"\nSmolLM2 <-> Gemma 3: {len(s_ids)} shared strings")
    assert 10_000 < len(s_ids) < 49_152


@pytest.mark.real
@pytest.mark.parametrize("student,teacher", [("smollm2", "gemma3"), ("gemma3", "smollm2")])
def test_real_pair_aligns(real, student, teacher):
    aligner = real_aligner(real, student, teacher)
    s_tok, t_tok = real[student], real[teacher]
    rows = real_rows(s_tok, 64, 128, seed=9, stop_id=int(aligner.stop_ids[0]))
    ids, mask = batch(rows, s_tok.pad_token_id, width=128)
    out = aligner.align(ids, mask, 256)
    check_invariants(out, aligner, ids, mask)
    enc = prefix_free_encoder(t_tok)
    for b, row in enumerate(rows[:16]):  # the brute-force reference on the real vocabularies
        s_ref, t_ref, tc_ref, n_ref = reference(
            aligner.student_bytes,
            aligner.teacher_bytes,
            lambda s: enc.encode(s, add_special_tokens=False).ids,
            row,
            set(aligner.stop_ids.tolist()),
            aligner.teacher_stop_id,
        )
        np.testing.assert_array_equal(out.student_chunks[b, : len(row)], s_ref)
        np.testing.assert_array_equal(out.teacher_chunks[b, : len(t_ref)], tc_ref)
        assert out.num_chunks[b] == n_ref
    st = out.stats
    print(
        f"\n{student} -> {teacher}: aligned {st['aligned_fraction']:.4f} of "
        f"{st['student_tokens']} tokens, {st['chunks']} chunks, "
        f"{st['student_tokens'] / st['chunks']:.2f} student and "
        f"{out.teacher_mask.sum() / st['chunks']:.2f} teacher tokens per chunk"
    )
    # A row cut at 127 tokens can end inside a character (its first bytes only): the only
    # tokens lost. Everything else here survives both tokenizers.
    for b, row in enumerate(rows):
        lost = np.flatnonzero(out.student_chunks[b, : len(row)] < 0)
        assert (lost >= len(row) - 3).all() and len(lost) <= 2, (b, lost)
    assert st["aligned_fraction"] > 0.99


@pytest.mark.real
def test_real_pair_speed(real):
    """Host-side cost per batch of 64 x 128 sampled tokens (SmolLM2 student, Gemma 3 teacher)."""
    aligner = real_aligner(real, "smollm2", "gemma3")
    rows = real_rows(real["smollm2"], 64, 128, seed=10, stop_id=int(aligner.stop_ids[0]))
    ids, mask = batch(rows, real["smollm2"].pad_token_id, width=128)
    aligner.align(ids, mask, 256)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        aligner.align(ids, mask, 256)
        times.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(times))
    print(f"\nalignment, 64 x 128 tokens, SmolLM2 -> Gemma 3: {ms:.1f} ms per batch (median)")
    assert ms < 250
