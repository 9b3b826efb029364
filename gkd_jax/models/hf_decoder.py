"""Hugging Face decoder families <-> DecoderConfig and the decoder's parameter tree.

`config_from_hf` reads a checkpoint's config.json (hub style, `rope_theta` + `rope_scaling`, or
transformers-5 style, `rope_parameters`), `config_to_hf` writes one transformers loads as the same
model, and `params_from_hf` / `params_to_hf` rename and transpose tensors between HF's state dict
and `nnx.to_pure_dict(nnx.state(model, nnx.Param))`. The generic safetensors IO lives in
gkd_jax/models/hf.py. Anything the decoder cannot compute exactly is refused with a ValueError
naming the config.json field, never approximated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gkd_jax.models.decoder import DecoderConfig
from gkd_jax.models.safetensors_io import nest, read_param

# "gemma3" is a multimodal checkpoint (Gemma 3 4B/12B/27B): its text tower is read as a
# gemma3_text model (and exported as one); the vision tower's tensors are left in the file.
MODEL_TYPES: tuple[str, ...] = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3"
)  # fmt: skip
# Gemma3Config's text tower: Gemma3TextConfig's defaults for the shape fields its hub
# text_config leaves out (gemma-3-4b-pt's names hidden_size, intermediate_size, layers only).
_GEMMA3_TOWER = dict(
    vocab_size=262_208,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
)
# Where a multimodal Gemma 3 file keeps the text tower: the hub's names, transformers 5's.
_TOWER_PREFIXES = ("language_model.model.", "model.language_model.")
_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
           "model.multi_modal_projector.")  # fmt: skip

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}

# What each family hard-codes in its modeling file: config_from_hf sets these DecoderConfig
# fields, config_to_hf refuses a config whose values differ (the family could not express it).
_PLAIN = dict(
    qk_norm=False,
    norm_offset=0.0,
    post_norms=False,
    scale_embeddings=False,
    query_pre_attn_scalar=None,
    attn_softcap=None,
    final_softcap=None,
    rope_local_theta=None,
)
_FIXED: dict[str, dict[str, Any]] = {
    "llama": _PLAIN | dict(sliding_window=None),
    "mistral": _PLAIN | dict(qkv_bias=False, o_bias=False, mlp_bias=False),
    "qwen2": _PLAIN | dict(qkv_bias=True, o_bias=False, mlp_bias=False),
    "qwen3": _PLAIN | dict(qk_norm=True, mlp_bias=False),
    "gemma2": dict(
        qk_norm=False,
        norm_offset=1.0,
        post_norms=True,
        scale_embeddings=True,
        mlp_bias=False,
        rope_local_theta=None,
    ),
    # Gemma 3: Gemma 2's norms plus (1 + w) RMSNorms on q and k; the local RoPE base is read.
    "gemma3_text": dict(
        qk_norm=True, norm_offset=1.0, post_norms=True, scale_embeddings=True, mlp_bias=False
    ),
}

# The transformers config classes' defaults for fields a config.json may leave out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        num_key_value_heads=None, tie_word_embeddings=False, max_position_embeddings=2048
    ),
    "mistral": dict(
        num_key_value_heads=8,
        tie_word_embeddings=False,
        max_position_embeddings=4096 * 32,
        sliding_window=4096,
    ),
    "qwen2": dict(num_key_value_heads=32, tie_word_embeddings=False, max_position_embeddings=32768),
    "qwen3": dict(
        num_key_value_heads=32,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
        head_dim=128,
    ),
    "gemma2": dict(
        num_key_value_heads=4,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "gemma3_text": dict(
        num_key_value_heads=4,
        tie_word_embeddings=True,
        max_position_embeddings=131_072,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=256,
        sliding_window=4096,
        sliding_window_pattern=6,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
    ),
}

# HF activation names (transformers.activations.ACT2FN) -> DecoderConfig.activation, and back.
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu": "gelu",
    "gelu_python": "gelu",
}
_HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope_from_hf(hf: dict, max_positions: int) -> dict[str, Any]:
    """RoPE fields from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError(
            "config.json rope_parameters: per-layer-type RoPE (nested dicts) is not supported"
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = dict(
        rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    )
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise ValueError(f"config.json partial_rotary_factor={partial}: only 1.0 is supported")
    if rope_type == "default":
        return out
    if rope_type not in ("linear", "llama3"):
        raise ValueError(
            f"config.json rope_scaling/rope_parameters rope_type={rope_type!r} is not supported "
            "(supported: default, linear, llama3)"
        )

    def need(key):
        if params.get(key) is None:
            raise ValueError(f"config.json rope_scaling/rope_parameters: {rope_type} needs {key!r}")
        return params[key]

    out.update(rope_type=rope_type, rope_factor=float(need("factor")))
    if rope_type == "llama3":
        out.update(
            rope_low_freq_factor=float(need("low_freq_factor")),
            rope_high_freq_factor=float(need("high_freq_factor")),
            rope_original_max_positions=int(
                hf.get("original_max_position_embeddings")
                or params.get("original_max_position_embeddings")
                or max_positions
            ),
        )
    return out


def _gemma3_rope(hf: dict, defaults: dict, max_positions: int) -> dict[str, Any]:
    """Gemma 3's two RoPEs: the full-attention layers' (rope_theta, scaled as rope_scaling says)
    and the sliding layers' plain one (rope_local_base_freq), from transformers 5's per-layer-type
    `rope_parameters` or the hub's flat fields."""
    params = hf.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in params.values()):
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full, local = dict(params or hf.get("rope_scaling") or {}), {}
    full.setdefault("rope_theta", hf.get("rope_theta", defaults["rope_theta"]))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", defaults["rope_local_base_freq"]))
    local_type = local.get("rope_type", local.get("type", "default"))
    if local_type != "default":
        raise ValueError(
            f"config.json rope_parameters.sliding_attention rope_type={local_type!r}: only the "
            "default (unscaled) RoPE is supported on sliding layers"
        )
    scalar = {k: v for k, v in hf.items() if k not in ("rope_parameters", "rope_scaling")}
    out = _rope_from_hf(scalar | {"rope_parameters": full}, max_positions)
    return out | dict(rope_local_theta=float(local["rope_theta"]))


def _int_if_whole(x: float) -> float | int:
    # Gemma2Config's strict validation wants an int where the value is one (256, 144).
    return int(x) if float(x).is_integer() else x


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def _layer_types(hf: dict, model_type: str, n: int, window: int | None) -> list[str]:
    """Each layer's attention kind, as the family's modeling code decides it."""
    if model_type == "mistral":  # MistralModel ignores layer_types: the window is everywhere
        return ["sliding_attention" if window is not None else "full_attention"] * n
    if hf.get("layer_types") is not None:
        types = list(hf["layer_types"])
        if len(types) != n or any(t not in _LAYER_TYPES for t in types):
            raise ValueError(
                f"config.json layer_types={types}: expected {n} of {_LAYER_TYPES} (chunked or "
                "other attention kinds are not supported)"
            )
        return types
    if model_type == "gemma2":  # even layers slide
        return [_LAYER_TYPES[(i + 1) % 2] for i in range(n)]
    if model_type == "gemma3_text":  # every `pattern`-th layer is global, the others slide
        pattern = hf.get("sliding_window_pattern", 6)
        return [_LAYER_TYPES[bool((i + 1) % pattern)] for i in range(n)]
    if model_type in ("qwen2", "qwen3") and window is not None:
        first = hf.get("max_window_layers", 28)
        return [_LAYER_TYPES[i >= first] for i in range(n)]
    return ["full_attention"] * n


def _gemma3_text_tower(hf: dict) -> dict:
    """A multimodal Gemma 3 config.json's text_config as a gemma3_text one."""
    tie = dict(tie_word_embeddings=hf.get("tie_word_embeddings", True))
    return _GEMMA3_TOWER | tie | (hf.get("text_config") or {}) | dict(model_type="gemma3_text")


def config_from_hf(hf: dict) -> DecoderConfig:
    """DecoderConfig of a Hugging Face config.json dict; ValueError naming the field for
    anything the decoder does not compute exactly."""
    if hf.get("model_type") == "gemma3":
        hf = _gemma3_text_tower(hf)
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json model_type={model_type!r} is not supported (supported: {MODEL_TYPES})"
        )
    defaults = _DEFAULTS[model_type]

    def field(key, default=None):
        return hf[key] if key in hf else defaults.get(key, default)

    shape = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    for key in (*shape, "intermediate_size"):
        if key not in hf:
            raise ValueError(f"config.json has no {key!r}")
    if field("use_bidirectional_attention"):
        raise ValueError("config.json use_bidirectional_attention=True is not supported")
    heads, hidden, n = hf["num_attention_heads"], hf["hidden_size"], hf["num_hidden_layers"]
    head_dim = field("head_dim") or hidden // heads
    max_positions = field("max_position_embeddings")

    gemma = model_type in ("gemma2", "gemma3_text")
    act_key = "hidden_activation" if gemma else "hidden_act"
    act = field(act_key, "silu")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"config.json {act_key}={act!r} is not supported (supported: {list(_ACTIVATIONS)})"
        )

    window = field("sliding_window")
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None  # Qwen's config classes drop the window unless use_sliding_window
    if model_type == "llama":
        window = None  # LlamaModel has no sliding window whatever config.json says
    slides = [t == "sliding_attention" for t in _layer_types(hf, model_type, n, window)]
    if window is None or not any(slides):
        window, sliding_layers = None, None
    else:
        sliding_layers = None if all(slides) else tuple(slides)

    bias = bool(field("attention_bias", False))
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        num_layers=n,
        num_heads=heads,
        num_kv_heads=field("num_key_value_heads") or heads,
        intermediate_size=hf["intermediate_size"],
        # None when it is the default, so our own configs round-trip unchanged.
        head_dim=None if head_dim == hidden // heads else head_dim,
        rms_norm_eps=float(field("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(field("tie_word_embeddings")),
        model_type=model_type,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(field("mlp_bias", False)),
        activation=_ACTIVATIONS[act],
        sliding_window=window,
        sliding_layers=sliding_layers,
        max_position_embeddings=max_positions,
    )
    if model_type == "gemma3_text":
        if any(slides) and window is None:
            raise ValueError("config.json layer_types has sliding layers but sliding_window=null")
        fields.update(_gemma3_rope(hf, defaults, max_positions))
    else:
        fields.update(_rope_from_hf(hf, max_positions))
    if gemma:
        fields.update(
            query_pre_attn_scalar=float(field("query_pre_attn_scalar")),
            attn_softcap=_float_or_none(field("attn_logit_softcapping")),
            final_softcap=_float_or_none(field("final_logit_softcapping")),
        )
    fields.update(_FIXED[model_type])
    return DecoderConfig(**fields)


def _check_exportable(cfg: DecoderConfig) -> None:
    """ValueError unless cfg.model_type's config.json can express every field of cfg."""
    t = cfg.model_type
    if t not in MODEL_TYPES:
        raise ValueError(f"DecoderConfig.model_type={t!r} has no HF export (one of {MODEL_TYPES})")
    for key, want in _FIXED[t].items():
        if getattr(cfg, key) != want:
            raise ValueError(
                f"model_type={t!r} cannot express DecoderConfig.{key}={getattr(cfg, key)!r} "
                f"(the family has {want!r}); pick the model_type whose architecture matches"
            )
    if t in ("llama", "qwen3", "gemma2", "gemma3_text") and cfg.qkv_bias != cfg.o_bias:
        raise ValueError(
            f"model_type={t!r}: attention_bias biases q, k, v and o alike, but qkv_bias="
            f"{cfg.qkv_bias}, o_bias={cfg.o_bias} (q/k/v biases alone are model_type='qwen2')"
        )
    if t == "mistral" and cfg.sliding_layers is not None:
        raise ValueError("model_type='mistral' slides every layer or none (sliding_layers=None)")
    slides = any(cfg.slides(i) for i in range(cfg.num_layers))
    plain_local = cfg.rope_local_theta is not None or cfg.rope_type == "default"
    if t == "gemma3_text" and slides and not plain_local:
        raise ValueError(
            "model_type='gemma3_text' rotates sliding layers by plain RoPE: set rope_local_theta "
            f"(the sliding layers here would use rope_type={cfg.rope_type!r})"
        )


def _rope_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """transformers 5's rope_parameters for cfg (the inverse of _rope_from_hf)."""
    rope_params: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        rope_params["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope_params.update(
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_max_positions,
        )
    return rope_params


def config_to_hf(cfg: DecoderConfig) -> dict:
    """A complete config.json dict for `cfg`: transformers' AutoConfig / AutoModelForCausalLM
    build the same model from it. Token ids (bos/eos/pad) are left None for the caller to set."""
    _check_exportable(cfg)
    t = cfg.model_type
    rope_params = _rope_to_hf(cfg)
    layer_types = [_LAYER_TYPES[cfg.slides(i)] for i in range(cfg.num_layers)]
    d: dict[str, Any] = dict(
        model_type=t,
        architectures=[ARCHITECTURES[t]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.dim_per_head,
        hidden_act=_HF_ACTIVATION[cfg.activation],
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings
        or _DEFAULTS[t]["max_position_embeddings"],
        # Both RoPE spellings: transformers 5 reads rope_parameters, older readers the others.
        rope_theta=cfg.rope_theta,
        rope_scaling=None
        if cfg.rope_type == "default"
        else {k: v for k, v in rope_params.items() if k != "rope_theta"},
        rope_parameters=rope_params,
        attention_dropout=0.0,
        use_cache=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if t in ("llama", "qwen3", "gemma2", "gemma3_text"):
        d["attention_bias"] = cfg.qkv_bias
    if t == "llama":
        d["mlp_bias"] = cfg.mlp_bias
    if t == "mistral":
        d["sliding_window"] = cfg.sliding_window  # written even when None: its default is 4096
    if t in ("qwen2", "qwen3"):
        slides = [cfg.slides(i) for i in range(cfg.num_layers)]
        d.update(
            use_sliding_window=cfg.sliding_window is not None,
            sliding_window=cfg.sliding_window,
            # Qwen slides the layers from max_window_layers on; layer_types says it exactly.
            max_window_layers=slides.index(True) if any(slides) else cfg.num_layers,
            layer_types=layer_types,
        )
    if t in ("gemma2", "gemma3_text"):
        d.update(
            hidden_activation=_HF_ACTIVATION[cfg.activation],
            query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.dim_per_head),
            attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap,
            # With no sliding layer the window is never read; Gemma2's mask code wants a number.
            sliding_window=cfg.sliding_window or cfg.max_position_embeddings or 4096,
            layer_types=layer_types,
        )
    if t == "gemma3_text":
        local = cfg.rope_theta if cfg.rope_local_theta is None else cfg.rope_local_theta
        d.update(
            rope_local_base_freq=local,
            rope_parameters={
                "full_attention": rope_params,
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            },
            use_bidirectional_attention=False,
        )
    return d


def _tensor_map(cfg: DecoderConfig) -> list[tuple[tuple, str, bool, tuple[int, ...]]]:
    """(path in the nnx pure dict, HF name, whether it is a transposed kernel, HF shape)."""
    d, h, f = cfg.hidden_size, cfg.dim_per_head, cfg.intermediate_size
    q, kv = cfg.num_heads * h, cfg.num_kv_heads * h
    out = [(("embed_tokens", "embedding"), "model.embed_tokens.weight", False, (cfg.vocab_size, d))]

    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."

        def linear(module, name, d_in, d_out, bias, i=i, pre=pre):
            path = ("layers", i, module, name)
            out.append(((*path, "kernel"), f"{pre}{module}.{name}.weight", True, (d_out, d_in)))
            if bias:
                out.append(((*path, "bias"), f"{pre}{module}.{name}.bias", False, (d_out,)))

        def norm(name, dim=d, i=i, pre=pre):
            out.append(
                (("layers", i, *name.split("."), "weight"), f"{pre}{name}.weight", False, (dim,))
            )

        norm("input_layernorm")
        linear("self_attn", "q_proj", d, q, cfg.qkv_bias)
        linear("self_attn", "k_proj", d, kv, cfg.qkv_bias)
        linear("self_attn", "v_proj", d, kv, cfg.qkv_bias)
        linear("self_attn", "o_proj", q, d, cfg.o_bias)
        if cfg.qk_norm:
            norm("self_attn.q_norm", h)
            norm("self_attn.k_norm", h)
        norm("post_attention_layernorm")
        if cfg.post_norms:
            norm("pre_feedforward_layernorm")
            norm("post_feedforward_layernorm")
        linear("mlp", "gate_proj", d, f, cfg.mlp_bias)
        linear("mlp", "up_proj", d, f, cfg.mlp_bias)
        linear("mlp", "down_proj", f, d, cfg.mlp_bias)
    out.append((("norm", "weight"), "model.norm.weight", False, (d,)))
    if not cfg.tie_embeddings:
        out.append((("lm_head", "kernel"), "lm_head.weight", True, (cfg.vocab_size, d)))
    return out


def _ignorable(name: str, cfg: DecoderConfig) -> bool:
    # Old Llama checkpoints saved RoPE buffers; tied checkpoints may still carry lm_head.weight,
    # which HF ignores for the embedding.
    tied_head = name in ("lm_head.weight", "language_model.lm_head.weight")
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and tied_head)


def hf_sources(
    cfg: DecoderConfig, names: set[str], shape_of: Callable[[str], tuple[int, ...]]
) -> dict[tuple, tuple[str, bool]]:
    """{path in the nnx pure dict: (HF tensor name, whether it is a transposed kernel)} for a
    checkpoint holding `names`, whose shapes `shape_of(name)` gives (from the header: nothing is
    read). Raises naming missing, unexpected or misshapen tensors."""
    # Checkpoints of the bare model (LlamaModel, ...) have no "model." prefix; a multimodal
    # Gemma 3 keeps its text tower under one of _TOWER_PREFIXES.
    bare = "model.embed_tokens.weight" not in names and "embed_tokens.weight" in names
    tower = next((p for p in _TOWER_PREFIXES if p + "embed_tokens.weight" in names), None)

    def stored(name: str) -> str:
        if tower is not None:
            head = "language_model." if tower.startswith("language_model") else ""
            return head + name if name == "lm_head.weight" else tower + name.removeprefix("model.")
        return name.removeprefix("model.") if bare else name

    entries = _tensor_map(cfg)
    expected = {stored(name) for _, name, _, _ in entries}
    missing = sorted(expected - set(names))
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} tensor(s) the {cfg.model_type} config needs: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    unexpected = sorted(
        n
        for n in set(names) - expected
        if not (_ignorable(n, cfg) or (tower is not None and n.startswith(_VISION)))
    )
    if unexpected:
        raise ValueError(
            f"the checkpoint has {len(unexpected)} tensor(s) the {cfg.model_type} config does "
            f"not use (does config.json match the weights?): {unexpected[:8]}"
        )
    sources = {}
    for path, name, transpose, shape in entries:
        if tuple(shape_of(stored(name))) != shape:
            raise ValueError(
                f"tensor {stored(name)}: shape {tuple(shape_of(stored(name)))}, the config "
                f"needs {shape}"
            )
        sources[path] = (stored(name), transpose)
    return sources


def params_from_hf(cfg: DecoderConfig, get: Callable[[str], np.ndarray], names: set[str]) -> dict:
    """The nnx pure dict (`{'layers': {0: {...}}, ...}`, float32 numpy) of the HF tensors `names`,
    read whole with `get(name)`. Raises naming missing, unexpected or misshapen tensors. (The
    sharded load, hf.load_pretrained with a mesh, reads slices through `hf_sources` instead.)"""
    sources = hf_sources(cfg, names, lambda name: np.shape(get(name)))

    def get_slice(name, index):
        return np.asarray(get(name))[index]

    return nest({path: read_param(get_slice, *source) for path, source in sources.items()})


def params_to_hf(cfg: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
    """HF state-dict tensors (numpy, the params' dtype) of an nnx pure dict; `lm_head.weight`
    only when the embeddings are untied."""
    out = {}
    for path, name, transpose, _ in _tensor_map(cfg):
        node = params
        for key in path:
            # Layer indices are ints in nnx pure dicts, strings after a JSON/orbax round trip.
            node = node[key] if key in node else node[str(key)]
        x = np.asarray(node)
        out[name] = np.ascontiguousarray(x.T if transpose else x)
    return out
