"""load_hf_tokenizer on model directories: the tokenizer.json a directory ships is what encodes."""

import json

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gkd_jax.data.hf_tokenizer import load_hf_tokenizer


def test_generic_tokenizer_in_a_qwen2_model_dir_encodes_as_its_file(tmp_path):
    # A word-level tokenizer saved beside a config.json that says qwen2 (the layout of
    # ../shared/bench/make_tiny_hf_models.py): transformers 5's AutoTokenizer picks
    # Qwen2Tokenizer there, which encodes these words as nothing.
    vocab = {"<pad>": 0, "<|end|>": 1, **{f"w{i}": i + 2 for i in range(50)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|end|>")
    fast.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))

    tok = load_hf_tokenizer(str(tmp_path))
    text = "w3 w14 w0 w49"
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids
    assert reference == [5, 16, 2, 51]
    assert tok(text, add_special_tokens=False)["input_ids"] == reference
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0
