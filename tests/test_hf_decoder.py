"""Parity of gkd_jax's decoder with transformers' PyTorch models, family by family.

Each family gets a tiny random HF model (float32, eager attention) whose norms and biases are
randomized too; its state dict goes through hf_decoder.params_from_hf into our decoder and the
logits must match torch's on a padded batch. Sliding windows are smaller than the sequences, so
the window (and Gemma 2's sliding/full alternation) is exercised.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig  # noqa: E402

from gkd_jax.decoding.sampling import SamplingConfig, make_sampler  # noqa: E402
from gkd_jax.models import build_decoder, functional  # noqa: E402
from gkd_jax.models.decoder import (  # noqa: E402
    DecoderConfig,
    causal_lm_decoding,
    causal_mask,
    positions_from_mask,
)
from gkd_jax.models.hf_decoder import (  # noqa: E402
    MODEL_TYPES,
    config_from_hf,
    config_to_hf,
    params_from_hf,
    params_to_hf,
)

V, T = 128, 12  # vocabulary; sequence length of the full forwards (> every sliding window)
TOL = 1e-4

COMMON = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)

# Hub-style config.json dicts (rope_theta + rope_scaling), or transformers-5 style where noted.
FAMILIES = {
    # head_dim 16, theta 500, context 32: RoPE frequencies fall in all three llama3 bands.
    "llama3": dict(
        model_type="llama",
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_theta=500.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
    "llama_linear": dict(
        model_type="llama",
        head_dim=32,
        tie_word_embeddings=True,
        rope_scaling=dict(type="linear", factor=2.0),
    ),
    "mistral": dict(model_type="mistral", sliding_window=5, tie_word_embeddings=False),
    # Layer 1 slides, layer 0 does not (Qwen slides from max_window_layers on).
    "qwen2": dict(
        model_type="qwen2",
        tie_word_embeddings=True,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    ),
    "qwen3": dict(
        model_type="qwen3",
        head_dim=32,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000.0),
    ),
    # Older Gemma 2 configs have no layer_types: even layers slide (here 0 and 2).
    "gemma2": dict(
        model_type="gemma2",
        num_hidden_layers=3,
        head_dim=32,
        query_pre_attn_scalar=24,
        sliding_window=4,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=10.0,
        hidden_activation="gelu_pytorch_tanh",
    ),
    # Hub-style Gemma 3: no layer_types (every 2nd layer global here: 0 and 2 slide), the global
    # layers' RoPE base and linear scaling, the sliding layers' own base (small, so that it
    # matters over 12 positions), (1 + w) q/k norms.
    "gemma3": dict(
        model_type="gemma3_text",
        num_hidden_layers=3,
        head_dim=32,
        query_pre_attn_scalar=24,
        sliding_window=4,
        sliding_window_pattern=2,
        tie_word_embeddings=False,  # tied, these random weights greedily repeat one token
        rope_theta=1000.0,
        rope_local_base_freq=30.0,
        rope_scaling=dict(rope_type="linear", factor=4.0),
        hidden_activation="gelu_pytorch_tanh",
    ),
}

WINDOWED = ("mistral", "qwen2", "gemma2", "gemma3")  # the families above with a sliding window


def hf_config(name: str):
    return AutoConfig.for_model(**(COMMON | FAMILIES[name]))


def randomize(model, seed: int, gemma: bool, scale: float = 1.0):
    """Random weights everywhere (HF inits norms to 1 and biases to 0, which hides mistakes);
    `scale` multiplies the embeddings and kernels."""
    g = torch.Generator().manual_seed(seed)
    # Tied large embeddings make every model predict its input token (greedy decoding would
    # just repeat it), the more so as Gemma multiplies them by sqrt(hidden): keep them small.
    tied = model.config.tie_word_embeddings
    embed_std = 0.08 if gemma else 0.15 if tied else 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.3 * z)
            elif name.endswith("bias"):
                p.copy_(0.2 * z)
            elif "embed_tokens" in name:
                p.copy_(scale * embed_std * z)
            else:
                p.copy_(scale * z / np.sqrt(p.shape[1]))
    return model.eval()


@functools.cache
def torch_model(name: str, scale: float = 1.0):
    model = AutoModelForCausalLM.from_config(
        hf_config(name), attn_implementation="eager", dtype=torch.float32
    )
    return randomize(model, list(FAMILIES).index(name), name.startswith("gemma"), scale)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def jax_model(cfg: DecoderConfig, tensors: dict[str, np.ndarray]):
    params = params_from_hf(cfg, tensors.__getitem__, set(tensors))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_decoder(cfg)))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


@functools.cache
def family(name: str):
    """(cfg, jitted apply_fn, init_cache): one compile per family, whatever the weights."""
    cfg = config_from_hf(COMMON | FAMILIES[name])
    _, apply_fn, init_cache = functional(nnx.eval_shape(lambda: build_decoder(cfg)))
    return cfg, jax.jit(apply_fn), init_cache


@functools.cache
def ours(name: str, scale: float = 1.0):
    """(cfg, params, jitted apply_fn, init_cache) of our decoder holding torch_model's weights."""
    cfg, apply_fn, init_cache = family(name)
    params = nnx.state(jax_model(cfg, state_dict_numpy(torch_model(name, scale))))
    return cfg, params, apply_fn, init_cache


def padded_batch(seed: int):
    """Rows: unpadded, left-padded by 3, right-padded by 4."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, (3, T)).astype(np.int32)
    valid = np.ones((3, T), bool)
    valid[1, :3] = False
    valid[2, -4:] = False
    tokens[~valid] = 0
    return tokens, valid


def torch_logits(model, tokens, valid) -> np.ndarray:
    # HF's forward numbers positions 0..T-1 whatever the mask; generate skips pads like this.
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(valid.astype(np.int64)),
            position_ids=torch.from_numpy(positions),
        )
    return out.logits.numpy()


def our_logits(name, tokens, valid, scale=1.0) -> np.ndarray:
    _, params, apply_fn, _ = ours(name, scale)
    v = jnp.asarray(valid)
    logits, _ = apply_fn(params, jnp.asarray(tokens), positions_from_mask(v), causal_mask(v))
    return np.asarray(logits)


# ---------------------------------------------------------------- logits parity


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(name):
    tokens, valid = padded_batch(seed=1)
    ref = torch_logits(torch_model(name), tokens, valid)
    got = our_logits(name, tokens, valid)
    assert np.all(np.isfinite(got))  # pad queries (fully masked rows) included
    diff = np.abs(got[valid] - ref[valid]).max()
    assert diff <= TOL, f"{name}: max abs diff {diff:.2e}"
    assert np.std(ref[valid]) > 0.5  # not a comparison of near-constant logits


@pytest.mark.parametrize("name", WINDOWED)
def test_sliding_window_matters(name):
    """Without its window the same torch model gives other logits: the parity above tests the
    window, not a no-op."""
    tokens, valid = padded_batch(seed=1)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**(COMMON | FAMILIES[name] | dict(sliding_window=1000))),
        attn_implementation="eager",
        dtype=torch.float32,
    )
    model.load_state_dict(torch_model(name).state_dict())
    diff = torch_logits(model.eval(), tokens, valid) - torch_logits(
        torch_model(name), tokens, valid
    )
    assert np.abs(diff[valid]).max() > 1e-2


@pytest.mark.parametrize(
    "change",
    [dict(rope_local_base_freq=10_000.0), dict(rope_theta=10_000.0), dict(rope_scaling=None)],
)
def test_gemma3_both_ropes_matter(change):
    """Another local base, global base or no global scaling gives other logits: the parity
    above tests Gemma 3's two RoPEs, each on its own layers."""
    tokens, valid = padded_batch(seed=1)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**(COMMON | FAMILIES["gemma3"] | change)),
        attn_implementation="eager",
        dtype=torch.float32,
    )
    model.load_state_dict(torch_model("gemma3").state_dict())
    ref = torch_logits(torch_model("gemma3"), tokens, valid)
    assert np.abs(torch_logits(model.eval(), tokens, valid) - ref)[valid].max() > 1e-2
    cfg = config_from_hf(COMMON | FAMILIES["gemma3"])
    assert cfg.rope_local_theta == 30.0 and (cfg.rope_type, cfg.rope_factor) == ("linear", 4.0)
    assert cfg.sliding_layers == (True, False, True) and cfg.qk_norm and cfg.norm_offset == 1.0


def test_gemma2_large_logits_softcap_finite():
    """Scores and logits far past the caps: soft-capping binds, nothing is NaN, and the result
    still matches torch (the cap is applied before the mask)."""
    tokens, valid = padded_batch(seed=2)
    model = torch_model("gemma2", 8.0)
    ref = torch_logits(model, tokens, valid)
    got = our_logits("gemma2", tokens, valid, 8.0)
    assert np.all(np.isfinite(got))
    assert np.abs(ref[valid]).max() > 9.0  # the final cap (10) is what bounds them
    assert np.abs(got).max() <= 10.0
    np.testing.assert_allclose(got[valid], ref[valid], atol=TOL, rtol=0)


# ---------------------------------------------------------------- generation and caching


def slow_unless(fast: tuple[str, ...], names=tuple(FAMILIES)) -> list:
    """`names`, those outside `fast` marked slow (each costs a few seconds of compiling)."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", slow_unless(("llama3", "gemma2", "gemma3")))
def test_greedy_generation_matches_transformers(name):
    rng = np.random.default_rng(3)
    p, n = 7, 8  # prompt + new tokens exceed every window
    lengths = [7, 4, 2]
    prompt = np.zeros((3, p), np.int32)
    mask = np.zeros((3, p), bool)
    for i, m in enumerate(lengths):
        prompt[i, p - m :] = rng.integers(1, V, m)
        mask[i, p - m :] = True
    eos = 2  # both stop at it and pad after it with 0
    gen = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    with torch.no_grad():
        ref = (
            torch_model(name)
            .generate(
                input_ids=torch.from_numpy(prompt.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                generation_config=gen,
            )[:, p:]
            .numpy()
        )
    _, params, apply_fn, init_cache = ours(name)
    sampler = make_sampler(
        causal_lm_decoding(apply_fn, init_cache),
        SamplingConfig(max_new_tokens=n, temperature=0, stop_ids=(eos,), pad_id=0),
    )
    out = sampler(params, jnp.asarray(prompt), jnp.asarray(mask), jax.random.key(0))
    assert len(np.unique(ref)) > 4  # not a degenerate repeat of one token
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


@pytest.mark.parametrize("name", slow_unless(("gemma2", "gemma3"), WINDOWED))
def test_cached_decoding_equals_full_forward(name):
    """Prefill a left-padded prompt, then one token at a time past the window: the cache's key
    positions keep the window right."""
    cfg, params, apply_fn, init_cache = ours(name)
    assert cfg.sliding_window < T
    rng = np.random.default_rng(4)
    p, k = 5, T - 5
    lengths = np.array([5, 2, 1])
    tokens = rng.integers(1, V, (3, T)).astype(np.int32)
    valid = np.ones((3, T), bool)
    for i, m in enumerate(lengths):
        valid[i, : p - m] = False
    v = jnp.asarray(valid)
    full = np.asarray(
        apply_fn(params, jnp.asarray(tokens), positions_from_mask(v), causal_mask(v))[0]
    )
    cache = init_cache(3, T)
    # Only sliding layers keep key positions, and some layer of each family here does not slide.
    assert [("pos" in c) for c in cache] == [cfg.slides(i) for i in range(cfg.num_layers)]
    assert not all(cfg.slides(i) for i in range(cfg.num_layers)) or name == "mistral"
    key_valid = np.zeros((3, T), bool)
    key_valid[:, :p] = valid[:, :p]
    causal = np.arange(T)[None, :] <= np.arange(p)[:, None]  # [P, S]
    logits, cache = apply_fn(
        params,
        jnp.asarray(tokens[:, :p]),
        positions_from_mask(v[:, :p]),
        jnp.asarray(causal[None] & key_valid[:, None, :]),
        cache,
        0,
    )
    np.testing.assert_allclose(
        np.asarray(logits)[valid[:, :p]], full[:, :p][valid[:, :p]], atol=1e-5, rtol=0
    )
    for i in range(k):
        key_valid[:, p + i] = True
        logits, cache = apply_fn(
            params,
            jnp.asarray(tokens[:, p + i : p + i + 1]),
            jnp.asarray((lengths + i)[:, None].astype(np.int32)),
            jnp.asarray(key_valid[:, None, :]),
            cache,
            jnp.int32(p + i),
        )
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, p + i], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- export round trip


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_round_trip(name):
    """Our config and params, exported, load strictly into a fresh transformers model built from
    config_to_hf alone, and give torch's logits; the config comes back unchanged."""
    cfg, params, _, _ = ours(name)
    d = config_to_hf(cfg)
    assert d["model_type"] == FAMILIES[name]["model_type"] and len(d["architectures"]) == 1
    assert config_from_hf(d) == cfg
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**d), attn_implementation="eager", dtype=torch.float32
    )
    assert type(model).__name__ == d["architectures"][0]
    tensors = params_to_hf(cfg, nnx.to_pure_dict(params))
    assert ("lm_head.weight" in tensors) == (not cfg.tie_embeddings)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False
    )
    assert unexpected == [] and set(missing) <= (
        {"lm_head.weight"} if cfg.tie_embeddings else set()
    )
    tokens, valid = padded_batch(seed=5)
    got = torch_logits(model.eval(), tokens, valid)
    ref = torch_logits(torch_model(name), tokens, valid)
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5, rtol=0)


def test_arith_default_config_exports_as_llama():
    cfg = DecoderConfig(99, 64, 2, 4, 2, 192)
    d = config_to_hf(cfg)
    assert d["architectures"] == ["LlamaForCausalLM"]
    assert type(AutoConfig.for_model(**d)).__name__ == "LlamaConfig"
    assert config_from_hf(d) == dataclass_with(cfg, max_position_embeddings=2048)
    with pytest.raises(ValueError, match="qwen2"):
        config_to_hf(dataclass_with(cfg, qkv_bias=True))


def dataclass_with(cfg: DecoderConfig, **kw) -> DecoderConfig:
    return DecoderConfig(**(cfg.to_dict() | kw))


# ---------------------------------------------------------------- config.json reading


@pytest.mark.parametrize("name", list(FAMILIES))
def test_transformers5_config_dict_reads_the_same(name):
    """AutoConfig(...).to_dict() (rope_parameters, layer_types) gives the hub dict's config."""
    assert config_from_hf(hf_config(name).to_dict()) == config_from_hf(COMMON | FAMILIES[name])


LLAMA31_8B = {  # Meta-Llama-3.1-8B config.json (hub style)
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def test_config_from_hub_llama31():
    cfg = config_from_hf(LLAMA31_8B)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head) == (32, 32, 8, 128)
    assert (cfg.rope_type, cfg.rope_theta, cfg.rope_factor) == ("llama3", 500000.0, 8.0)
    assert (cfg.rope_low_freq_factor, cfg.rope_high_freq_factor) == (1.0, 4.0)
    assert cfg.rope_original_max_positions == 8192 and cfg.rms_norm_eps == 1e-5
    assert not (cfg.tie_embeddings or cfg.qkv_bias or cfg.o_bias or cfg.sliding_window)
    # transformers 5 spelling of the same config
    t5 = AutoConfig.for_model(**LLAMA31_8B).to_dict()
    assert "rope_parameters" in t5 and config_from_hf(t5) == cfg


def test_config_from_hub_qwen25_gemma2_mistral():
    qwen = config_from_hf(
        dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_window_layers=21,
            rope_theta=1000000.0,
            sliding_window=32768,
            use_sliding_window=False,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
        )
    )
    assert qwen.qkv_bias and not qwen.o_bias and qwen.sliding_window is None
    assert qwen.tie_embeddings and qwen.dim_per_head == 64
    gemma = config_from_hf(
        dict(
            model_type="gemma2",
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=256,
            sliding_window=4096,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            rope_theta=10000.0,
        )
    )
    assert gemma.sliding_layers == tuple(i % 2 == 0 for i in range(26))
    assert gemma.tie_embeddings and gemma.activation == "gelu_tanh" and gemma.norm_offset == 1.0
    assert (gemma.attn_softcap, gemma.final_softcap, gemma.query_pre_attn_scalar) == (50, 30, 256)
    mistral = dict(
        model_type="mistral",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=10000.0,
    )
    assert config_from_hf(mistral | dict(sliding_window=4096)).sliding_window == 4096
    assert config_from_hf(mistral | dict(sliding_window=None)).sliding_window is None
    # JSON checkpoint metadata stores sliding_layers as a list: it must compare equal.
    assert (
        DecoderConfig(**gemma.to_dict() | {"sliding_layers": list(gemma.sliding_layers)}) == gemma
    )


def test_unsupported_configs_raise_naming_the_field():
    base = COMMON | FAMILIES["llama3"]
    for rope_type in ("yarn", "dynamic", "longrope"):
        with pytest.raises(ValueError, match=f"rope_type='{rope_type}'"):
            config_from_hf(base | dict(rope_scaling=dict(rope_type=rope_type, factor=2.0)))
    with pytest.raises(ValueError, match="model_type='llama4'"):
        config_from_hf(base | dict(model_type="llama4"))
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf(base | dict(hidden_act="relu2"))
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        config_from_hf(base | dict(partial_rotary_factor=0.5))
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        config_from_hf(COMMON | FAMILIES["gemma2"] | dict(use_bidirectional_attention=True))
    assert set(MODEL_TYPES) == {
        "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3"
    }  # fmt: skip
    gemma3 = COMMON | FAMILIES["gemma3"]
    with pytest.raises(ValueError, match="sliding_attention rope_type='linear'"):
        local = dict(rope_type="linear", factor=2.0, rope_theta=10.0)
        config_from_hf(gemma3 | dict(rope_parameters=dict(sliding_attention=local)))
    with pytest.raises(ValueError, match="sliding_window=null"):
        config_from_hf(gemma3 | dict(sliding_window=None))


def test_params_from_hf_tied_and_missing_tensors():
    cfg = config_from_hf(COMMON | FAMILIES["qwen2"])  # tied
    tensors = state_dict_numpy(torch_model("qwen2"))
    without_head = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    a = params_from_hf(cfg, without_head.__getitem__, set(without_head))
    b = params_from_hf(cfg, tensors.__getitem__, set(tensors))
    assert "lm_head" not in a and a["layers"][1]["self_attn"]["q_proj"]["bias"].dtype == np.float32
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(
        a["layers"][1]["self_attn"]["k_proj"]["kernel"],
        tensors["model.layers.1.self_attn.k_proj.weight"].T,
    )
    gone = dict(without_head)
    del gone["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        params_from_hf(cfg, gone.__getitem__, set(gone))
    untied = config_from_hf(COMMON | FAMILIES["qwen2"] | dict(tie_word_embeddings=False))
    with pytest.raises(ValueError, match="lm_head.weight"):
        params_from_hf(untied, without_head.__getitem__, set(without_head))
    extra = tensors | {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}
    with pytest.raises(ValueError, match="o_proj.bias"):
        params_from_hf(cfg, extra.__getitem__, set(extra))


def test_gemma3_multimodal_checkpoint_loads_its_text_tower(tmp_path):
    """A `gemma3` checkpoint (Gemma 3 4B/12B/27B are published so): load_pretrained reads its
    text tower as a gemma3_text model (the vision tower's tensors left in the file) and gives
    the multimodal model's logits on text; the tower exports as Gemma3ForCausalLM."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from gkd_jax.models import load_pretrained

    text = COMMON | FAMILIES["gemma3"] | dict(tie_word_embeddings=True)
    text = {k: v for k, v in text.items() if k != "model_type"}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    cfg = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=V - 1, boi_token_index=V - 3, eoi_token_index=V - 2,
    )  # fmt: skip
    model = randomize(Gemma3ForConditionalGeneration(cfg), 11, gemma=True)
    model.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    assert ours.cfg.model_type == "gemma3_text" and ours.cfg.rope_local_theta == 30.0
    assert ours.cfg.sliding_layers == (True, False, True) and ours.cfg.tie_embeddings
    tokens, valid = padded_batch(seed=6)
    tokens = np.minimum(tokens, V - 4)  # no image tokens
    ref = torch_logits(model.eval(), tokens, valid)
    got = np.asarray(ours(jnp.asarray(tokens), jnp.asarray(valid)))
    np.testing.assert_allclose(got[valid], ref[valid], atol=TOL, rtol=0)
    assert config_to_hf(ours.cfg)["architectures"] == ["Gemma3ForCausalLM"]
