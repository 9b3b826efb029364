"""Model checkpoints, and the teacher / SFT student that ship in the package."""

import jax
import numpy as np
import pytest
from flax import nnx

from gkd_jax.data import arith
from gkd_jax.data.char_tokenizer import build_char_tokenizer
from gkd_jax.data.pipeline import encode
from gkd_jax.data.resources import resolve_path
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.models import DecoderConfig, build_decoder, functional
from gkd_jax.models.decoder import causal_lm_decoding
from gkd_jax.training import checkpoint

CFG = DecoderConfig(31, 16, 2, 4, 2, 24, tie_embeddings=False, qkv_bias=True)


def test_round_trip(tmp_path):
    model = build_decoder(CFG, seed=3)
    checkpoint.save_model(str(tmp_path / "m"), model)
    loaded = checkpoint.load_model(str(tmp_path / "m"), expected=CFG)
    assert loaded.cfg == CFG
    a, b = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    checkpoint.save_model(str(tmp_path / "m"), build_decoder(CFG, seed=4))  # overwrite works
    again = checkpoint.load_model(str(tmp_path / "m"))
    assert not np.array_equal(again.embed_tokens.embedding[...], loaded.embed_tokens.embedding[...])


def test_shape_mismatch_and_missing(tmp_path):
    checkpoint.save_model(str(tmp_path / "m"), build_decoder(CFG))
    other = DecoderConfig(31, 32, 2, 4, 2, 24, tie_embeddings=False, qkv_bias=True)
    with pytest.raises(ValueError, match=r"hidden_size.*\(16, 32\)"):
        checkpoint.load_model(str(tmp_path / "m"), expected=other)
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        checkpoint.load_model(str(tmp_path / "nothing"))


# Documented in docs/guides/quickstart.md and gkd_jax/assets/arith/README.md: greedy accuracy on
# 500 held-out
# problems, teacher 0.990 and student SFT 0.660. Here on the first 256 (0.660 measured for the
# student), so a band of about two standard errors around the documented figure. The n2000 pair
# (the paper's regime): 0.918 and 0.527 measured on these same 256 when they were trained.
SHIPPED = {
    "teacher": (0.95, 1.0),
    "student_sft": (0.60, 0.72),
    "n2000/teacher": (0.88, 0.96),
    "n2000/student_sft": (0.47, 0.59),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_load_and_score_as_documented(name, tmp_path):
    model = checkpoint.load_model(resolve_path(f"builtin:arith/{name}"))
    tok = build_char_tokenizer(str(tmp_path / "tok"))
    examples = arith.make_examples("test", 256, 0)
    data = encode(tok, [e.prompt for e in examples], [e.target for e in examples],
                  max_prompt_len=48, max_completion_len=48)  # fmt: skip
    params, apply_fn, init_cache = functional(model)
    cfg = SamplingConfig(48, temperature=0.0, stop_ids=(tok.eos_token_id,), pad_id=0)
    out = make_sampler(causal_lm_decoding(apply_fn, init_cache), cfg)(
        params, data["prompt"], data["prompt_mask"], jax.random.key(0)
    )
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    answers = [arith.extract_answer(tok.decode(t[m])) for t, m in zip(tokens, mask, strict=True)]
    acc = np.mean([a == e.answer for a, e in zip(answers, examples, strict=True)])
    low, high = SHIPPED[name]
    assert low <= acc <= high, f"{name}: accuracy {acc:.3f} outside documented [{low}, {high}]"
