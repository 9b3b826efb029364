"""What each vocabulary id stands for as bytes of text, and the ids two vocabularies share.

Cross-tokenizer distillation compares a student and a teacher on the same text, so it needs, per
id, the exact UTF-8 bytes that id contributes to decoded text. Hugging Face fast tokenizers come in
two families, told apart by their `tokenizer.json` decoder:

* byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2): a token is a string of bytes, each byte written
  as one printable unicode character (GPT-2's `bytes_to_unicode` table); inverting the table gives
  the bytes. A token with a character outside the table (an added token such as "<|im_end|>" is
  plain text) stands for its own UTF-8, as the `ByteLevel` decoder does.
* SentencePiece-style (Gemma, Llama 2, Mistral, T5): "▁" (the Metaspace replacement) is a space,
  and `<0xNN>` byte-fallback tokens are the one byte 0xNN.

The leading-space convention. SentencePiece's `add_dummy_prefix` (tokenizer.json: a `Prepend("▁")`
normalizer, or a Metaspace pre-tokenizer whose `prepend_scheme` is "first"/"always") makes "Hi"
encode as "▁Hi", and its decoder drops the one leading space of a decoded text again (a `Strip`
decoder, or Metaspace on the first token). Here every "▁" is a space, always: a token's bytes are
what it stands for *inside* a text, which is where a sampled completion's tokens are (after a
prompt). The strip at the start of a decode is no token's property. The other half of the
convention is `prefix_free_encoder`: it encodes a text with the dummy prefix turned off, so that the
bytes of its tokens concatenate to exactly the text's UTF-8 (Gemma 3 adds no prefix: no change).

Special tokens (BOS, EOS, end-of-turn, pad, unused slots) stand for no text: their entry is b"" and
`special_ids` lists them. Non-special added tokens (Gemma's "\\n\\n" or "<table>") are text.
"""

from __future__ import annotations

import copy
import functools
import json
import re

import numpy as np

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def byte_level_chars() -> dict[str, int]:
    """GPT-2's table inverted: the printable character that stands for each byte -> the byte.
    Printable latin-1 bytes stand for themselves; the other 68 are moved to U+0100 and up."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    keep |= set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _pieces(spec: dict | None) -> list[dict]:
    """The components of a decoder / normalizer / pre-tokenizer spec, Sequences flattened."""
    if not spec:
        return []
    inner = spec.get("decoders") or spec.get("normalizers") or spec.get("pretokenizers")
    if spec.get("type") == "Sequence" and inner is not None:
        return [p for s in inner for p in _pieces(s)]
    return [spec]


def _spec(tokenizer, part: str) -> dict | None:
    """One component of the fast tokenizer ('decoder', 'normalizer', 'pre_tokenizer') as its
    tokenizer.json dict; parsing the whole file would cost ~1 s for Gemma's 262k vocabulary."""
    component = getattr(tokenizer.backend_tokenizer, part)
    return json.loads(component.__getstate__()) if component is not None else None


def tokenizer_family(tokenizer) -> str:
    """'byte_level' or 'sentencepiece', read from the fast tokenizer's decoder."""
    decoders = _pieces(_spec(tokenizer, "decoder"))
    kinds = {d.get("type") for d in decoders}
    if "ByteLevel" in kinds:
        return "byte_level"
    replaces_space = any(
        d.get("type") == "Replace"
        and d.get("content") == " "
        and d.get("pattern", {}).get("String")
        for d in decoders
    )
    if "Metaspace" in kinds or replaces_space:
        return "sentencepiece"
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__} has decoder(s) {sorted(map(str, kinds))}: "
        "cross-tokenizer alignment knows byte-level BPE (a ByteLevel decoder) and SentencePiece "
        "(Metaspace, or Replace('▁', ' ') with ByteFallback); use a fast tokenizer of one of them"
    )


def _space_marks(decoder: dict | None) -> dict[str, str]:
    """Characters the decoder turns into spaces ('▁' for SentencePiece, whatever a Metaspace
    `replacement` or Replace pattern names)."""
    marks = {}
    for d in _pieces(decoder):
        if d.get("type") == "Metaspace":
            marks[d.get("replacement", "▁")] = " "
        elif d.get("type") == "Replace" and d.get("pattern", {}).get("String"):
            marks[d["pattern"]["String"]] = d["content"]
    return marks


def _id_to_token(tokenizer) -> dict[int, str]:
    backend = tokenizer.backend_tokenizer
    tokens = {i: piece for piece, i in backend.get_vocab(with_added_tokens=False).items()}
    # Added tokens last: one that repeats a vocabulary string keeps its own id here.
    tokens.update({i: a.content for i, a in backend.get_added_tokens_decoder().items()})
    return tokens


def special_ids(tokenizer) -> frozenset[int]:
    """Ids that stand for no text: special added tokens and the tokenizer's declared specials."""
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    ids = {i for i, a in added.items() if a.special}
    return frozenset(ids | set(tokenizer.all_special_ids))


def token_bytes(tokenizer, size: int | None = None) -> list[bytes]:
    """The UTF-8 bytes each id stands for in decoded text, b"" for specials and for ids past the
    tokenizer's vocabulary up to `size` (a model's embedding table is often padded larger).

    Concatenating the bytes of a token sequence gives the bytes of `decode(ids)`, except that a
    SentencePiece decoder with a dummy prefix drops one leading space (module docstring)."""
    family = tokenizer_family(tokenizer)
    tokens = _id_to_token(tokenizer)
    specials = special_ids(tokenizer)
    n = max(max(tokens) + 1, len(tokenizer), size or 0)
    out = [b""] * n
    if family == "byte_level":
        chars = byte_level_chars()
        for i, tok in tokens.items():
            if i not in specials:
                in_table = all(c in chars for c in tok)
                out[i] = bytes(chars[c] for c in tok) if in_table else tok.encode()
        return out
    decoder = _spec(tokenizer, "decoder")
    marks = _space_marks(decoder)
    fallback = any(d.get("type") == "ByteFallback" for d in _pieces(decoder))
    for i, tok in tokens.items():
        if i in specials:
            continue
        hit = BYTE_FALLBACK.match(tok) if fallback else None
        if hit:
            out[i] = bytes([int(hit.group(1), 16)])
            continue
        for mark, content in marks.items():
            tok = tok.replace(mark, content)
        out[i] = tok.encode()
    return out


def prefix_free_encoder(tokenizer):
    """The tokenizer's `tokenizers.Tokenizer` with any dummy prefix turned off (a Prepend
    normalizer dropped, Metaspace's prepend_scheme "never", ByteLevel's add_prefix_space off), so
    that a text's tokens concatenate to exactly its bytes: how a completion is tokenized after a
    prompt. The tokenizer itself is not changed; without a prefix the result encodes alike."""
    from tokenizers import Tokenizer

    parts = {p: _spec(tokenizer, p) for p in ("normalizer", "pre_tokenizer")}
    fixed = copy.deepcopy(parts)
    fixed["normalizer"] = _without_prepend(fixed["normalizer"])
    for pre in _pieces(fixed["pre_tokenizer"]):  # the same dicts, edited in place
        if pre.get("type") == "Metaspace":
            pre["prepend_scheme"] = "never"
            if "add_prefix_space" in pre:
                pre["add_prefix_space"] = False
        elif pre.get("type") == "ByteLevel":
            pre["add_prefix_space"] = False
    if fixed == parts:
        return tokenizer.backend_tokenizer
    whole = json.loads(tokenizer.backend_tokenizer.to_str())  # once, where a prefix is added
    return Tokenizer.from_str(json.dumps({**whole, **fixed}))


def _without_prepend(norm: dict | None) -> dict | None:
    if not norm:
        return norm
    if norm.get("type") == "Prepend":
        return None
    if norm.get("type") == "Sequence":
        kept = [_without_prepend(n) for n in norm["normalizers"]]
        return {**norm, "normalizers": [n for n in kept if n is not None]}
    return norm


def vocab_map(
    student_bytes: list[bytes], teacher_bytes: list[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """(student_ids [K], teacher_ids [K]) int32: the ids whose byte strings are identical, in
    student-id order, each string once (where a vocabulary holds one string under two ids, the
    lower id stands for it: the tokenizer only ever produces one of them, almost always that one).

    Specials (b"") are not matched, not even by role: a teacher's <end_of_turn> and a student's
    <|im_end|> play the same part, but which probabilities mean "stop here" is the alignment's
    business (its final stop chunk), and an EOS and an end-of-turn are different events to a
    model that has both."""
    first_teacher: dict[bytes, int] = {}
    for i, b in enumerate(teacher_bytes):
        if b:
            first_teacher.setdefault(b, i)
    seen: set[bytes] = set()
    pairs = []
    for i, b in enumerate(student_bytes):
        if b and b not in seen and b in first_teacher:
            seen.add(b)
            pairs.append((i, first_teacher[b]))
    arr = np.asarray(pairs, np.int32).reshape(-1, 2)  # [K, 2]
    return arr[:, 0].copy(), arr[:, 1].copy()
