"""Hugging Face checkpoints in and out: `load_pretrained` and `save_pretrained`.

A family module (hf_decoder.py, hf_t5.py) maps one architecture: config.json <-> our config,
and tensor names/layouts <-> our parameter tree. This file does the rest: opening the directory
(resources.resolve_model_dir: local, or a hub id), reading and writing safetensors, checking
that every parameter arrived with its shape, and writing config.json, generation_config.json and
the tokenizer so that `transformers.AutoModelFor*.from_pretrained` (or vLLM) reads the result.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gkd_jax.data.resources import is_hf_model_dir, resolve_model_dir
from gkd_jax.models.decoder import Decoder, DecoderConfig
from gkd_jax.models.prune import pruned_config, select_layers
from gkd_jax.models.safetensors_io import (
    SafetensorsReader,
    nest,
    read_param,
    write_safetensors,
)
from gkd_jax.parallel import sharding

FAMILY_MODULES = ("gkd_jax.models.hf_decoder", "gkd_jax.models.hf_t5")
SAVE_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


def _families() -> list[ModuleType]:
    return [importlib.import_module(m) for m in FAMILY_MODULES]


def supported_model_types() -> list[str]:
    return sorted(t for f in _families() for t in f.MODEL_TYPES)


def family_for_model_type(model_type: str) -> ModuleType:
    for family in _families():
        if model_type in family.MODEL_TYPES:
            return family
    raise ValueError(
        f"model_type {model_type!r} is not supported; supported: {supported_model_types()}"
    )


def _family_of(model: nnx.Module) -> ModuleType:
    if isinstance(model, Decoder):
        return importlib.import_module("gkd_jax.models.hf_decoder")
    return importlib.import_module("gkd_jax.models.hf_t5")


def read_hf_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def build_model(cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0):
    """A randomly initialized model of any family from its config dataclass."""
    rngs = nnx.Rngs(seed)
    if isinstance(cfg, DecoderConfig):
        return Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    from gkd_jax.models import hf_t5

    return hf_t5.build(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out |= _flat(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def _check_params(loaded: dict, abstract: dict, source: str) -> None:
    got, want = _flat(loaded), _flat(abstract)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [
        f"{k}: checkpoint {tuple(got[k].shape)}, model {tuple(want[k].shape)}"
        for k in sorted(set(got) & set(want))
        if tuple(got[k].shape) != tuple(want[k].shape)
    ]
    if missing or extra or bad:
        raise ValueError(
            f"{source}: parameters do not match the model its config.json describes: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}"
        )


def load_pretrained(
    name_or_path: str,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    mesh: Mesh | None = None,
    layers: Sequence[int] = (),
):
    """Our NNX model with the weights of a Hugging Face checkpoint directory (or hub id).

    `dtype` is the compute dtype; parameters are stored in `param_dtype` (float32 for training).
    Decoder-only: `model(input_ids, attention_mask=...)`; T5: `model(input_ids, attention_mask=...,
    decoder_input_ids=...)`; both return logits [B, T, V]. Parameters are read one at a time
    from the memory-mapped files. With `mesh`, each host copies out of the file only the slices
    its own devices hold (gkd_jax/parallel/sharding.py rules; `jax.make_array_from_callback`), so
    no host
    or device ever holds a whole parameter that the rules split.

    `layers` (decoders only; config.init.layers, models/prune.py): the model made of those
    layers of the checkpoint, in that order, re-indexed 0..n-1. Only they are read: the
    dropped layers cost no memory (every tensor's header is still checked).
    """
    path = resolve_model_dir(name_or_path)
    if not is_hf_model_dir(path):
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    hf_config = read_hf_config(path)
    if "model_type" not in hf_config:
        raise ValueError(f"{path}/config.json has no model_type")
    family = family_for_model_type(hf_config["model_type"])
    full = family.config_from_hf(hf_config)
    cfg = pruned_config(full, layers) if layers else full
    model = nnx.eval_shape(lambda: build_model(cfg, dtype=dtype, param_dtype=param_dtype))
    state = nnx.state(model, nnx.Param)
    abstract = nnx.to_pure_dict(state)
    reader = SafetensorsReader(path)
    sources = family.hf_sources(full, reader.names, reader.shape)
    if layers:  # each kept layer read from its place in the checkpoint
        sources = select_layers(sources, layers)
    if hasattr(family, "check_checkpoint"):
        family.check_checkpoint(cfg, sources, reader.names, reader.get_slice)
    _check_params(nest({p: _our_shape(reader, *source) for p, source in sources.items()}),
                  abstract, path)  # fmt: skip
    targets = None if mesh is None else _by_path(sharding.tree_shardings(abstract, mesh))
    loaded = {}
    for p, a in _by_path(abstract).items():  # one parameter at a time
        name, transpose = sources[p]
        if mesh is None:
            loaded[p] = jnp.asarray(read_param(reader.get_slice, name, transpose), a.dtype)
        else:  # each device's slice, read from the file by the host that holds it
            read = _slice_reader(reader, name, transpose, a.dtype)
            loaded[p] = jax.make_array_from_callback(a.shape, targets[p], read)
    nnx.replace_by_pure_dict(state, nest(loaded))
    nnx.update(model, state)
    return model


def _by_path(tree: dict) -> dict[tuple, Any]:
    return {tuple(k.key for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _our_shape(reader: SafetensorsReader, name: str, transpose: bool) -> jax.ShapeDtypeStruct:
    shape = reader.shape(name)
    return jax.ShapeDtypeStruct(shape[::-1] if transpose else shape, np.float32)


def _slice_reader(reader: SafetensorsReader, name: str, transpose: bool, dtype):
    """The callback of jax.make_array_from_callback for one parameter: the slice `index` of our
    layout, read from the file; a slice several of this host's devices hold is read once."""
    read = functools.cache(
        lambda key: read_param(
            reader.get_slice, name, transpose, tuple(slice(*k) for k in key), dtype
        )
    )
    return lambda index: read(tuple((s.start, s.stop, s.step) for s in index))


def save_pretrained(
    model: nnx.Module,
    path: str,
    *,
    tokenizer=None,
    stop_ids: tuple[int, ...] = (),
    dtype: str = "float32",
) -> str:
    """Write `model` as a Hugging Face directory (config.json, safetensors, generation config,
    tokenizer when given) that transformers and vLLM load directly. Returns the path."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(SAVE_DTYPES)}")
    family = _family_of(model)
    params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tensors = family.params_to_hf(model.cfg, params)
    tensors = {k: np.asarray(v).astype(SAVE_DTYPES[dtype]) for k, v in tensors.items()}
    os.makedirs(path, exist_ok=True)
    write_safetensors(path, tensors)
    hf_config = family.config_to_hf(model.cfg) | {"dtype": dtype}
    generation = {}
    if tokenizer is not None:
        for field in ("bos_token_id", "pad_token_id"):
            if getattr(tokenizer, field, None) is not None:
                hf_config[field] = generation[field] = getattr(tokenizer, field)
        eos = list(stop_ids) or [tokenizer.eos_token_id]
        hf_config["eos_token_id"] = generation["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        tokenizer.save_pretrained(path)
    if "decoder_start_token_id" in hf_config:
        generation["decoder_start_token_id"] = hf_config["decoder_start_token_id"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if generation:
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    return path
