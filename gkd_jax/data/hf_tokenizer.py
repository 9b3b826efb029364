"""Tokenizers of Hugging Face model directories: stop ids, padding, and the shared-vocabulary
check between a teacher and a student."""

from __future__ import annotations

import json
import os

from transformers import PreTrainedTokenizerFast

from gkd_jax.data.resources import resolve_model_dir


def load_hf_tokenizer(name_or_path: str):
    """`AutoTokenizer` from a local directory (or hub id), with a pad token guaranteed: models
    such as Llama 3 ship none, and pads are masked everywhere, so EOS serves."""
    path = resolve_model_dir(name_or_path)
    tokenizer = load_local_tokenizer(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer at {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_local_tokenizer(path: str, **kwargs) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `path` (a directory, or a hub id where downloads are allowed)."""
    if _generic_fast_tokenizer(path):
        # transformers 5 maps a generic tokenizer.json in a model directory to the model type's
        # own class (config.json says qwen2 -> Qwen2Tokenizer), which rebuilds the pipeline from
        # the vocabulary and drops the file's pre-tokenizer: a word-level tokenizer then encodes
        # "w1 w2" as []. The file itself is the tokenizer, so load exactly that. It also spares
        # the import of AutoTokenizer, which imports torch where it is installed (~2 s).
        return PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


def _generic_fast_tokenizer(path: str) -> bool:
    """A directory whose tokenizer_config.json names the generic fast tokenizer class (the
    tokenizer is its tokenizer.json, whatever the model type)."""
    config = os.path.join(path, "tokenizer_config.json")
    if not (os.path.isdir(path) and os.path.exists(config)):
        return False
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        return False
    with open(config) as f:
        name = json.load(f).get("tokenizer_class")
    return name in ("PreTrainedTokenizerFast", "TokenizersBackend")


def stop_ids(tokenizer, *model_dirs: str) -> tuple[int, ...]:
    """The tokenizer's EOS plus every `eos_token_id` of the directories' generation_config.json
    (Llama 3 Instruct ends turns with <|eot_id|> and documents with <|end_of_text|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for d in model_dirs:
        path = os.path.join(d, "generation_config.json")
        if d and os.path.exists(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            ids += [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ValueError("no stop token: the tokenizer has no EOS and no generation_config.json")
    return tuple(dict.fromkeys(ids))


def check_same_vocabulary(
    student_tok, teacher_tok, student_src: str, teacher_src: str, limit: int | None = None
) -> None:
    """Raise unless the two tokenizers map every token to the same id (ids below `limit`, the
    models' shared table, when given: tokens past it never reach a model)."""

    def vocab(tok):
        return {t: i for t, i in tok.get_vocab().items() if limit is None or i < limit}

    a, b = vocab(student_tok), vocab(teacher_tok)
    if a == b:
        return
    differ = sorted(set(a.items()) ^ set(b.items()))[:5]
    raise ValueError(
        f"the student's tokenizer ({student_src}, {len(a)} tokens) and the teacher's "
        f"({teacher_src}, {len(b)} tokens) differ, e.g. {differ}: GKD compares next-token "
        "distributions id by id, so teacher and student must share one vocabulary"
    )
