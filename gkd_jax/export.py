"""Export a trained model to Hugging Face format, for transformers or vLLM:

    python -m gkd_jax.export --model=WORKDIR/model --out=/tmp/student-hf \
        [--tokenizer=DIR] [--dtype=bfloat16]

`--model` is a checkpoint written by training (WORKDIR/model, or any NAME/model of a recipe);
`--tokenizer` (default WORKDIR/tokenizer when it exists) is copied beside the weights, with its
stop ids (and those of its generation_config.json) as the model's eos_token_id.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from gkd_jax.config import cli
from gkd_jax.data.hf_tokenizer import load_hf_tokenizer, stop_ids
from gkd_jax.models.hf import SAVE_DTYPES, save_pretrained
from gkd_jax.training import checkpoint

_MODEL = flags.DEFINE_string("model", None, "A checkpoint directory written by training.")
_OUT = flags.DEFINE_string("out", None, "Where the Hugging Face directory goes.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer dir; default: beside the model.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(SAVE_DTYPES), "Weight dtype on disk.")
flags.mark_flags_as_required(["model", "out"])


def export(model_dir: str, out: str, tokenizer_dir: str = "", dtype: str = "float32") -> str:
    model = checkpoint.load_model(model_dir)
    if not tokenizer_dir:
        beside = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "tokenizer")
        tokenizer_dir = beside if os.path.isdir(beside) else ""
    tokenizer, stops = None, ()
    if tokenizer_dir:
        tokenizer = load_hf_tokenizer(tokenizer_dir)
        stops = stop_ids(tokenizer, tokenizer_dir)
    return save_pretrained(model, out, tokenizer=tokenizer, stop_ids=stops, dtype=dtype)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    path = export(_MODEL.value, _OUT.value, _TOKENIZER.value, _DTYPE.value)
    print(f"[export] {_MODEL.value} -> {path}")


if __name__ == "__main__":
    cli.run_app(main)
