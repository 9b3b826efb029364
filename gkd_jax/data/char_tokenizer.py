"""Character-level tokenizer for the embedded tasks, saved in standard Hugging Face format.

The tokenizer is built with the ``tokenizers`` library and saved via
``PreTrainedTokenizerFast.save_pretrained`` so it loads with ``AutoTokenizer.from_pretrained``,
the same code path used for real (pretrained) tokenizers.

Vocabulary (99 tokens): ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then every printable
ASCII character 32..126 (space included) as its own token. ``encode`` adds no special tokens;
the data pipeline appends ``<eos>`` itself.
"""

from __future__ import annotations

import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gkd_jax.data.hf_tokenizer import load_local_tokenizer

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CHARS = tuple(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARS)  # 99

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_char_tokenizer(out_dir: str) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer, save it to ``out_dir`` and return it."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    assert len(vocab) == VOCAB_SIZE

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    # transformers>=5 no longer writes special_tokens_map.json; keep it for older loaders.
    special_map = os.path.join(out_dir, "special_tokens_map.json")
    if not os.path.exists(special_map):
        with open(special_map, "w") as f:
            json.dump(
                {
                    "pad_token": "<pad>",
                    "bos_token": "<bos>",
                    "eos_token": "<eos>",
                    "unk_token": "<unk>",
                },
                f,
                indent=2,
            )
    return fast


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved in Hugging Face format from the local directory ``path``."""
    if not os.path.isdir(path) or not any(
        os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES
    ):
        raise FileNotFoundError(
            f"No tokenizer found at {path!r} (expected tokenizer.json / tokenizer_config.json). "
            "Create a character-level one with "
            "gkd_jax.data.char_tokenizer.build_char_tokenizer(path), or save a Hugging Face "
            "tokenizer there with tokenizer.save_pretrained(path)."
        )
    return load_local_tokenizer(path, local_files_only=True)
