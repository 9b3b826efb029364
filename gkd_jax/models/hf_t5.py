"""Hugging Face T5 checkpoints (T5, T5 v1.1, Flan-T5, mT5) <-> gkd_jax.models.t5.

Parameter names are Hugging Face's by construction (see t5.py), so the mapping is mechanical: a
path in the NNX parameter dict joined with dots is the HF name, `kernel` becomes a transposed
`weight`, `embedding` becomes `weight`.

Transformers 5 reads a T5 config differently from 4: it always ties the head in the model it
builds (and unties it when a checkpoint holds a different `lm_head.weight`), decides the
d_model**-0.5 output scale by `tie_word_embeddings` as written or by `scale_decoder_outputs`, and
lets a serialized `dense_act_fn` / `is_gated_act` override `feed_forward_proj`. Both generations
of config.json are read here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gkd_jax.models.safetensors_io import nest, read_param
from gkd_jax.models.t5 import T5, T5Config

MODEL_TYPES = ("t5", "mt5")

# HF activation name (ACT2FN key) -> ours. HF "gelu" is the exact erf GELU, which no T5 release
# uses; it is left out rather than approximated.
_FROM_HF_ACT = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_TO_HF_ACT = {"gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
# Stored copies of `shared.weight` in HF checkpoints, in the order they are looked for.
_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf: dict[str, Any]) -> T5Config:
    """T5Config from a parsed config.json; ValueError naming the field for what is unsupported."""
    model_type = hf.get("model_type")
    if model_type == "umt5":
        raise ValueError(
            "model_type 'umt5' is not supported: UMT5 gives every layer its own relative "
            "attention bias, T5 (which this model implements) shares block 0's"
        )
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"config.json lacks {missing}")

    proj = hf.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"feed_forward_proj={proj!r}: expected 'ACT' or 'gated-ACT'")
    hf_act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' legacy alias
    hf_act = hf.get("dense_act_fn", hf_act)
    gated = bool(hf.get("is_gated_act", len(parts) == 2))
    if hf_act not in _FROM_HF_ACT:
        raise ValueError(
            f"dense_act_fn={hf_act!r} (feed_forward_proj={proj!r}) is not supported; "
            f"supported: {sorted(_FROM_HF_ACT)}"
        )

    if model_type == "mt5":
        tie = False  # transformers never rescales mT5; every mT5 checkpoint has its own head
    elif "scale_decoder_outputs" in hf:  # written by transformers 5, whose tie flag is always True
        tie = bool(hf["scale_decoder_outputs"])
    else:
        tie = hf.get("tie_word_embeddings", True) is not False

    pad = hf.get("pad_token_id", 0)
    start = hf.get("decoder_start_token_id")
    eos = hf.get("eos_token_id", 1)
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_heads=hf["num_heads"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        gated=gated,
        activation=_FROM_HF_ACT[hf_act],
        tie_embeddings=tie,
        # T5 starts decoding from the pad token, which is what transformers falls back to.
        decoder_start_token_id=pad if start is None else start,
        pad_token_id=pad,
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    )


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
    """A complete config.json that transformers 4 and 5 load into the same model."""
    hf_act = _TO_HF_ACT[cfg.activation]
    if cfg.gated:
        proj = "gated-gelu" if cfg.activation == "gelu_tanh" else f"gated-{hf_act}"
    else:
        proj = hf_act
    eos = cfg.eos_token_id
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "feed_forward_proj": proj,
        "dense_act_fn": hf_act,
        "is_gated_act": cfg.gated,
        # Transformers 5 derives the output scale from this flag and unties the head itself when
        # the checkpoint holds a separate lm_head.weight; transformers 4 reads it for both.
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_encoder_decoder": True,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "dropout_rate": 0.1,
        "initializer_factor": 1.0,
        "use_cache": True,
    }


def build(cfg: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs) -> T5:
    return T5(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _param_paths(cfg: T5Config) -> list[tuple[tuple[Any, ...], tuple[int, ...]]]:
    """(path in the NNX pure dict, shape) of every parameter, from an abstract model."""
    model = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return [(tuple(k.key for k in path), tuple(leaf.shape)) for path, leaf in leaves]


def _hf_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(k) for k in path[:-1]) + ".weight"


def hf_sources(
    cfg: T5Config, names: set[str], shape_of: Callable[[str], tuple[int, ...]]
) -> dict[tuple, tuple[str, bool]]:
    """{path in the NNX pure dict: (HF tensor name, whether it is a transposed kernel)} for a
    checkpoint holding `names`, with shapes `shape_of(name)` (from the header: nothing is read).
    ValueError naming missing or misshapen tensors."""
    sources: dict[tuple, tuple[str, bool]] = {}
    missing, bad_shape = [], []
    embedding = next((n for n in _EMBEDDING_NAMES if n in names), None)
    for path, shape in _param_paths(cfg):
        if path == ("shared", "embedding"):
            name = embedding or "shared.weight"
        elif path == ("lm_head", "kernel") and "lm_head.weight" not in names and embedding:
            # Transformers ties a missing head to the embedding whatever the config says.
            name = embedding
        else:
            name = _hf_name(path)
        if name not in names:
            missing.append(name)
            continue
        transpose = path[-1] == "kernel"  # torch Linear: [out, in]
        hf_shape = shape[::-1] if transpose else shape
        if tuple(shape_of(name)) != hf_shape:
            bad_shape.append(f"{name} {tuple(shape_of(name))} (expected {hf_shape})")
            continue
        sources[path] = (name, transpose)
    if missing or bad_shape:
        raise ValueError(
            f"T5 checkpoint: {len(missing)} missing tensors {missing[:8]}; "
            f"{len(bad_shape)} with wrong shapes {bad_shape[:8]}"
        )
    return sources


def check_checkpoint(
    cfg: T5Config,
    sources: dict[tuple, tuple[str, bool]],
    names: set[str],
    get_slice: Callable[[str, Any], np.ndarray],
) -> None:
    """A tied model cannot represent a separate head: refuse a checkpoint whose lm_head.weight
    differs from the embedding rather than drop it silently. Compared a block of rows at a time
    (~16M values), so neither table is ever whole in memory."""
    if not (cfg.tie_embeddings and "lm_head.weight" in names):
        return
    embedding = sources[("shared", "embedding")][0]
    rows = max(1, 2**24 // cfg.d_model)
    for start in range(0, cfg.vocab_size, rows):
        block = (slice(start, min(start + rows, cfg.vocab_size)), slice(None))
        head = np.asarray(get_slice("lm_head.weight", block), np.float32)
        if not np.array_equal(head, np.asarray(get_slice(embedding, block), np.float32)):
            raise ValueError(
                "T5 checkpoint holds an lm_head.weight that differs from the embedding, but the "
                "config ties them (tie_word_embeddings / scale_decoder_outputs)"
            )


def params_from_hf(
    cfg: T5Config, get: Callable[[str], np.ndarray], names: set[str]
) -> dict[str, Any]:
    """The NNX pure parameter dict (numpy float32) from checkpoint tensors `get(name)`, read
    whole; `names` is every tensor the checkpoint holds. ValueError naming missing or misshapen
    tensors. (The sharded load, hf.load_pretrained with a mesh, reads slices instead.)"""
    sources = hf_sources(cfg, names, lambda name: np.shape(get(name)))

    def get_slice(name, index):
        return np.asarray(get(name))[index]

    check_checkpoint(cfg, sources, names, get_slice)
    return nest({path: read_param(get_slice, *source) for path, source in sources.items()})


def params_to_hf(cfg: T5Config, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF tensors from the NNX pure parameter dict, as transformers' save_pretrained writes them:
    the embedding once as `shared.weight` (loaders re-tie encoder/decoder.embed_tokens, and
    lm_head when the config ties it)."""
    out = {}
    for path, _ in _param_paths(cfg):
        value = params
        for key in path:
            value = value[key]
        value = np.asarray(value)
        out[_hf_name(path)] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return out
