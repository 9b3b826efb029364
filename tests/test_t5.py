"""T5 (gkd_jax.models.t5, hf_t5) against transformers' PyTorch T5ForConditionalGeneration.

Tiny random models of both families: T5 v1.1 / Flan-T5 (gated GELU, untied head) and original T5
(ReLU, tied head with d_model**-0.5 output scale). 8 buckets with max distance 20 on inputs of 24
tokens exercise both the exact and the log-spaced buckets, and the saturated one.
"""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import save_file

from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.models import hf_t5
from gkd_jax.models.t5 import T5Config, relative_position_buckets, t5_functions

V, D = 128, 64
TINY = dict(
    vocab_size=V,
    d_model=D,
    d_kv=12,  # 4 heads x 12 = 48: the attention inner dim differs from d_model
    d_ff=96,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
VARIANTS = {
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "original": dict(feed_forward_proj="relu", tie_word_embeddings=True),
}
TOL = 1e-4


BASE = {k: TINY[k] for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Torch's intra-op threads fight XLA's for the cores: tiny matmuls take 100x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_t5(model_type="t5", **config):
    if model_type == "mt5":
        config_cls, model_cls = transformers.MT5Config, transformers.MT5ForConditionalGeneration
    else:
        config_cls, model_cls = transformers.T5Config, transformers.T5ForConditionalGeneration
    torch.manual_seed(0)
    model = model_cls(config_cls(**config)).eval()
    with torch.no_grad():
        # Relative biases well above HF's init scale (d_model**-0.5), so a wrong bucket shows.
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 1.0)
        if model_type == "mt5" or config.get("tie_word_embeddings") is False:
            # Transformers 5 ties the head at init whatever the config says (from_pretrained
            # unties it when a checkpoint's lm_head differs): give it its own weights.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(V, D))
    return model


def jax_twin(tm):
    """Our model with the torch model's weights, loaded through config_from_hf/params_from_hf."""
    cfg = hf_t5.config_from_hf(tm.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    # Abstract build: random init would compile one initializer per parameter shape, for nothing.
    model = nnx.eval_shape(
        lambda: hf_t5.build(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(1))
    )
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, hf_t5.params_from_hf(cfg, sd.__getitem__, set(sd)))
    nnx.update(model, state)
    return cfg, model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request):
    tm = torch_t5(**TINY, **VARIANTS[request.param])
    cfg, model = jax_twin(tm)
    graphdef = nnx.graphdef(model)
    params, fns = t5_functions(model)
    return SimpleNamespace(
        name=request.param,
        torch=tm,
        cfg=cfg,
        model=model,
        params=params,
        fns=fns,
        apply=jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a)),
        score=jax.jit(fns.score),
    )


def tokens(rng, shape):
    return rng.integers(2, V, size=shape).astype(np.int32)  # no pad (0) or eos (1)


def lengths_mask(lengths, width, left=False):
    idx = np.arange(width)[None]
    lengths = np.asarray(lengths)[:, None]
    return (idx >= width - lengths) if left else (idx < lengths)


def torch_logits(tm, input_ids, decoder_input_ids, attention_mask=None, decoder_mask=None):
    def t(a):
        return None if a is None else torch.as_tensor(np.asarray(a, np.int64))

    with torch.no_grad():
        out = tm(
            input_ids=t(input_ids),
            attention_mask=t(attention_mask),
            decoder_input_ids=t(decoder_input_ids),
            decoder_attention_mask=t(decoder_mask),
        )
    return out.logits.numpy()


def prompts_and_completions(rng):
    """Left-padded prompts [3, 24] and right-padded completions [3, 8], with masks."""
    prompt_mask = lengths_mask([24, 15, 7], 24, left=True)
    completion_mask = lengths_mask([8, 5, 2], 8)
    prompt = np.where(prompt_mask, tokens(rng, prompt_mask.shape), 0)
    completion = np.where(completion_mask, tokens(rng, completion_mask.shape), 0)
    return prompt, prompt_mask, completion, completion_mask


def test_logits_match_torch_with_padding(pair):
    rng = np.random.default_rng(0)
    enc_mask = lengths_mask([24, 17, 9], 24)
    dec_mask = lengths_mask([10, 6, 3], 10)
    enc = np.where(enc_mask, tokens(rng, enc_mask.shape), 0)
    dec = np.where(dec_mask, tokens(rng, dec_mask.shape), 0)
    dec[:, 0] = 0  # decoder start
    ours = np.asarray(pair.apply(pair.params, enc, enc_mask, dec, dec_mask))
    ref = torch_logits(pair.torch, enc, dec, enc_mask, dec_mask)
    diff = np.abs(ours - ref)[dec_mask].max()
    print(f"\n{pair.name}: logits max abs diff {diff:.2e} (|logits| max {np.abs(ref).max():.1f})")
    assert diff <= TOL


def test_score_left_padded_prompts_match_unpadded_torch(pair):
    prompt, prompt_mask, completion, completion_mask = prompts_and_completions(
        np.random.default_rng(1)
    )
    ours = np.asarray(pair.score(pair.params, prompt, prompt_mask, completion, completion_mask))
    assert ours.shape == (3, 8, V) and ours.dtype == np.float32
    diffs = []
    for i in range(3):
        p = prompt[i][prompt_mask[i]][None]
        n = completion_mask[i].sum()
        dec = np.concatenate([[0], completion[i, : n - 1]])[None]
        diffs.append(np.abs(ours[i, :n] - torch_logits(pair.torch, p, dec)[0]).max())
    print(f"\n{pair.name}: score max abs diff {max(diffs):.2e}")
    assert max(diffs) <= TOL


def test_cached_decoding_matches_full_decoder(pair):
    prompt, prompt_mask, completion, completion_mask = prompts_and_completions(
        np.random.default_rng(2)
    )
    full = np.asarray(pair.score(pair.params, prompt, prompt_mask, completion, completion_mask))
    prefill = jax.jit(pair.fns.decoding.prefill, static_argnums=3)
    step = jax.jit(pair.fns.decoding.step)
    logits, state = prefill(pair.params, prompt, prompt_mask, 8)
    steps = [logits]
    for i in range(7):  # teacher-forced: feed completion token i, predict token i + 1
        logits, state = step(pair.params, jnp.asarray(completion[:, i]), jnp.int32(i), state)
        steps.append(logits)
    steps = np.stack(steps, axis=1)  # [B, N, V]
    diff = np.abs(steps - full)[completion_mask].max()
    print(f"\n{pair.name}: cached vs full max abs diff {diff:.2e}")
    assert diff <= TOL


def test_greedy_generation_matches_torch(pair):
    prompt, prompt_mask, _, _ = prompts_and_completions(np.random.default_rng(3))
    sampler = make_sampler(
        pair.fns.decoding,
        SamplingConfig(max_new_tokens=8, temperature=0.0, stop_ids=(1,), pad_id=0),
    )
    out = sampler(pair.params, prompt, prompt_mask, jax.random.key(0))
    tokens_, mask = np.asarray(out.tokens), np.asarray(out.mask)
    for i in range(3):
        with torch.no_grad():
            ref = pair.torch.generate(
                torch.as_tensor(prompt[i][prompt_mask[i]][None].astype(np.int64)),
                do_sample=False,
                max_new_tokens=8,
                decoder_start_token_id=0,
                eos_token_id=1,
                pad_token_id=0,
                # transformers sizes its generation cache by num_layers, not num_decoder_layers.
                use_cache=False,
            )[0, 1:].tolist()  # drop the decoder start token
        assert tokens_[i][mask[i]].tolist() == ref, f"row {i}"


def test_round_trip_through_transformers(pair, tmp_path):
    cfg = pair.cfg
    assert hf_t5.config_from_hf(hf_t5.config_to_hf(cfg)) == cfg
    tensors = hf_t5.params_to_hf(cfg, nnx.to_pure_dict(nnx.state(pair.model, nnx.Param)))
    # Strict key check: ours plus the aliases transformers re-ties are exactly its state dict.
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if cfg.tie_embeddings:
        aliases.add("lm_head.weight")
    assert not aliases & set(tensors)
    assert set(tensors) | aliases == set(pair.torch.state_dict())

    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_t5.config_to_hf(cfg)))
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert (loaded.lm_head.weight is loaded.shared.weight) == cfg.tie_embeddings
    rng = np.random.default_rng(4)
    enc, dec = tokens(rng, (2, 24)), tokens(rng, (2, 6))
    np.testing.assert_array_equal(
        torch_logits(loaded, enc, dec), torch_logits(pair.torch, enc, dec)
    )
    # transformers 5's own serialization of the config reads back to the same T5Config.
    assert hf_t5.config_from_hf(loaded.config.to_dict()) == cfg


def test_mt5_config_is_t5_v1_1():
    cfg = hf_t5.config_from_hf(transformers.MT5Config(**TINY).to_dict())
    assert cfg.gated and cfg.activation == "gelu_tanh" and not cfg.tie_embeddings


@pytest.mark.slow
def test_mt5_logits_match_torch():
    tm = torch_t5("mt5", **TINY)
    cfg, model = jax_twin(tm)
    rng = np.random.default_rng(5)
    enc, dec = tokens(rng, (2, 24)), tokens(rng, (2, 6))
    ours = np.asarray(model(jnp.asarray(enc), None, jnp.asarray(dec)))
    assert np.abs(ours - torch_logits(tm, enc, dec)).max() <= TOL


@pytest.mark.parametrize("buckets,max_distance", [(8, 20), (32, 128), (6, 10), (64, 256)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_torch(buckets, max_distance, bidirectional):
    rel = np.arange(-700, 701)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.as_tensor(rel), bidirectional, buckets, max_distance
    ).numpy()
    ours = relative_position_buckets(jnp.asarray(rel), bidirectional, buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), ref)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("activation", ["gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("tie", [True, False])
def test_config_to_hf_reads_back_in_transformers(gated, activation, tie):
    cfg = T5Config(
        vocab_size=V, d_model=D, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        gated=gated, activation=activation, tie_embeddings=tie,
    )  # fmt: skip
    hf = transformers.T5Config(**hf_t5.config_to_hf(cfg))
    act = {"gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}[activation]
    assert (hf.dense_act_fn, hf.is_gated_act, hf.scale_decoder_outputs) == (act, gated, tie)
    assert hf.decoder_start_token_id == 0 and hf.num_decoder_layers == 1
    assert hf_t5.config_from_hf(hf.to_dict()) == cfg
    assert hf_t5.config_from_hf(hf_t5.config_to_hf(cfg)) == cfg


def test_config_from_hf_reads_transformers_4_flan_t5_config():
    flan_base = {  # google/flan-t5-base config.json, as transformers 4 wrote it
        "architectures": ["T5ForConditionalGeneration"],
        "d_ff": 2048, "d_kv": 64, "d_model": 768, "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
        "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
        "model_type": "t5", "n_positions": 512, "num_decoder_layers": 12, "num_heads": 12,
        "num_layers": 12, "output_past": True, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False, "vocab_size": 32128,
    }  # fmt: skip
    cfg = hf_t5.config_from_hf(flan_base)
    assert (cfg.gated, cfg.activation, cfg.tie_embeddings) == (True, "gelu_tanh", False)
    t5_small = {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64,
                "d_ff": 2048, "num_layers": 6, "num_heads": 8}  # fmt: skip
    cfg = hf_t5.config_from_hf(t5_small)  # original T5: relu and tied are the defaults
    assert (cfg.gated, cfg.activation, cfg.tie_embeddings) == (False, "relu", True)
    assert cfg.num_decoder_layers == 6 and cfg.decoder_start_token_id == 0


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "umt5"}, "umt5.*relative attention bias"),
        ({"model_type": "bart"}, "model_type 'bart'"),
        ({"feed_forward_proj": "gated-gelu-x"}, "feed_forward_proj"),
        ({"feed_forward_proj": "gated-foo", "dense_act_fn": "foo"}, "dense_act_fn='foo'"),
        ({"feed_forward_proj": "gelu", "dense_act_fn": "gelu"}, "dense_act_fn='gelu'"),
        ({"d_ff": None}, "d_ff"),
    ],
)
def test_unsupported_configs_raise(change, match):
    hf = hf_t5.config_to_hf(T5Config(**BASE))
    hf.update(change)
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        hf_t5.config_from_hf(hf)


def test_t5_config_validates():
    with pytest.raises(ValueError, match="activation='gelu'"):
        T5Config(**BASE, activation="gelu")
    with pytest.raises(ValueError, match="relative_attention_max_distance"):
        T5Config(**BASE, relative_attention_num_buckets=32, relative_attention_max_distance=16)


def test_params_from_hf_names_and_errors():
    tm = torch_t5(**TINY)
    cfg = hf_t5.config_from_hf(tm.config.to_dict())
    assert cfg.tie_embeddings
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    full = hf_t5.params_from_hf(cfg, sd.__getitem__, set(sd))
    # Only the encoder's copy of the tied embedding, and no lm_head: the same parameters.
    names = set(sd) - {"shared.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    alt = hf_t5.params_from_hf(cfg, sd.__getitem__, names)
    jax.tree.map(np.testing.assert_array_equal, full, alt)
    assert alt["encoder"]["block"][0]["layer"][0]["SelfAttention"]["q"]["kernel"].dtype == (
        np.float32
    )

    gone = "decoder.block.2.layer.1.EncDecAttention.o.weight"
    with pytest.raises(ValueError, match=gone.replace(".", r"\.")):
        hf_t5.params_from_hf(cfg, sd.__getitem__, set(sd) - {gone})
    bad = dict(sd, **{"lm_head.weight": sd["shared.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight"):
        hf_t5.params_from_hf(cfg, bad.__getitem__, set(bad))
