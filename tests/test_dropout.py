"""Student dropout (config.dropout_rate): T5's dropout sites against Hugging Face's training-mode
forward, and the train step's use of it (rate 0 = the old step; rate > 0 a function of
(seed, step))."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from gkd_jax.config.defaults import base_config
from gkd_jax.models import hf_t5, sources
from gkd_jax.models.t5 import Dropout, t5_functions
from gkd_jax.training import trainer

V = 64
TINY = dict(
    vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.1,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip
VARIANTS = {
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "original": dict(feed_forward_proj="relu", tie_word_embeddings=True),
}


def scale(k: int) -> float:
    """A stand-in for the mask of dropout call k: distinct factors, so a site missing, extra or
    out of order changes the logits."""
    return 0.5 + ((7 * k) % 13) / 12


class ScaledDropout(Dropout):
    def apply(self, x, key):
        del key
        return x * jnp.asarray(scale(self.calls), x.dtype)


def torch_and_ours(variant, **changes):
    torch.manual_seed(0)
    cfg = transformers.T5Config(**(TINY | changes), **VARIANTS[variant])
    cfg._attn_implementation = "eager"  # attention dropout through nn.functional.dropout
    tm = transformers.T5ForConditionalGeneration(cfg)
    if not VARIANTS[variant]["tie_word_embeddings"]:
        tm.lm_head.weight = torch.nn.Parameter(torch.randn(V, TINY["d_model"]))
    ours_cfg = hf_t5.config_from_hf(tm.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    f32 = jnp.float32
    model = nnx.eval_shape(
        lambda: hf_t5.build(ours_cfg, dtype=f32, param_dtype=f32, rngs=nnx.Rngs(1))
    )
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, hf_t5.params_from_hf(ours_cfg, sd.__getitem__, set(sd)))
    nnx.update(model, state)
    return tm, model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dropout_sites_match_hugging_face_training_forward(variant, monkeypatch):
    tm, model = torch_and_ours(variant)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, V, (2, 7))
    mask = np.ones((2, 7), bool)
    mask[1, :3] = False  # left padding
    dec = np.concatenate([np.zeros((2, 1), int), rng.integers(2, V, (2, 4))], axis=1)

    calls = []

    def fake_dropout(input, p=0.5, training=True, inplace=False):
        calls.append(tuple(input.shape))
        return input * scale(len(calls))

    monkeypatch.setattr(torch.nn.functional, "dropout", fake_dropout)
    tm.train()
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(int)),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()  # fmt: skip
    dropout = ScaledDropout(0.1, jax.random.key(0))
    encoded = model.encode(jnp.asarray(ids), jnp.asarray(mask), dropout)
    ours, _ = model.decode(jnp.asarray(dec), model.cross_kv(encoded), jnp.asarray(mask),
                           dropout=dropout)  # fmt: skip
    # Per stack: embeddings, final norm; per layer: attention probs + output of each
    # attention, FFN inner + output. Encoder 2 x 4 + 2, decoder 2 x 6 + 2.
    assert dropout.calls == len(calls) == 24
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)
    # The real masks: inverted dropout keeps E[x] and zeroes about `rate` of the entries.
    x = jnp.ones((200, 200))
    y = np.asarray(Dropout(0.25, jax.random.key(3))(x))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01


def t5_student():
    _, model = torch_and_ours("v1_1", num_layers=1, num_decoder_layers=1)  # compiles faster
    return t5_functions(model)


def sft_config(rate):
    c = base_config()
    c.objective = "sft"
    c.dropout_rate = rate
    return c


def batch(rng, b=8, p=6, n=5):
    return {
        "prompt": jnp.asarray(rng.integers(2, V, (b, p)), jnp.int32),
        "prompt_mask": jnp.ones((b, p), bool),
        "completion": jnp.asarray(rng.integers(2, V, (b, n)), jnp.int32),
        "completion_mask": jnp.ones((b, n), bool),
    }


def test_train_step_dropout_is_off_at_rate_0_and_a_function_of_the_step():
    params, fns = t5_student()
    tx = optax.sgd(0.0)  # the parameters stay put: only the dropout masks can differ
    data = batch(np.random.default_rng(0))

    def state_at(s):
        fresh = jax.tree.map(jnp.copy, params)  # the step donates its state
        return {"params": fresh, "opt_state": tx.init(fresh), "step": jnp.int32(s)}

    def losses_at(rate, steps):
        step = trainer.make_train_step(sft_config(rate), fns, None, tx)
        return [float(step(state_at(s), None, data)[1]["loss"]) for s in steps]

    # Rate 0 compiles the eval-mode graph: no random bits at all; rate > 0 draws them.
    for rate, has_rng in ((0.0, False), (0.3, True)):
        step = trainer.make_train_step(sft_config(rate), fns, None, tx)
        hlo = step.lower(state_at(0), None, data).as_text()
        assert ("rng_bit_generator" in hlo) == has_rng

    # Rate 0: the eval-mode loss, computed independently from score (no trainer code).
    logits = jax.jit(fns.score)(params, *data.values())
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, data["completion"][..., None], axis=-1)
    (off,) = losses_at(0.0, [3])
    np.testing.assert_allclose(off, float(nll.mean()), rtol=1e-6)
    a3, a3_again, a4 = losses_at(0.3, [3, 3, 4])
    assert a3 == a3_again  # same (seed, step): the same masks, as after a resume
    assert a3 != a4 and a3 != pytest.approx(off, rel=1e-3)


def test_dropout_needs_a_family_that_has_it():
    from gkd_jax.models import build_decoder, functional_lm

    _, fns = functional_lm(build_decoder(sources.model_config(base_config().model)))
    with pytest.raises(ValueError, match="config.dropout_rate=0.1"):
        trainer.make_train_step(sft_config(0.1), fns, None, optax.sgd(0.1))
