"""Model checkpoints with orbax: a directory holding `model_config.json` and `params/`.

The config travels with the weights so that loading needs nothing else, and so that a workdir
that holds a model of another shape is caught (with the fix named) before anything compiles.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gkd_jax.models.decoder import Decoder, DecoderConfig
from gkd_jax.models.hf import build_model

CONFIG_FILE = "model_config.json"


def has_model(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
        os.path.join(path, "params")
    )


def _config_class(family: str):
    if family == "decoder":
        return DecoderConfig
    if family == "t5":
        from gkd_jax.models.t5 import T5Config

        return T5Config
    raise ValueError(f"unknown model family {family!r} in {CONFIG_FILE}")


def _tuples(value):
    # JSON turns tuples into lists; the config dataclasses are frozen and hashable.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _fields(config: dict) -> dict:
    return {k: _tuples(v) for k, v in config.items()}


def read_model_config(path: str):
    """The config dataclass (DecoderConfig or T5Config) of the model saved at `path`."""
    with open(os.path.join(path, CONFIG_FILE)) as f:
        meta = json.load(f)
    return _config_class(meta.get("family", "decoder"))(**_fields(meta["config"]))


def check_model_config(path: str, expected) -> None:
    """Raise if the checkpoint at `path` holds a model of another shape than `expected`."""
    found = read_model_config(path)
    if type(found) is not type(expected):
        raise ValueError(
            f"the checkpoint at {path} holds a {type(found).__name__} model, the config asks "
            f"for a {type(expected).__name__}: use another --workdir or delete {path}"
        )
    if found != expected:
        diff = {
            k: (v, getattr(expected, k))
            for k, v in found.to_dict().items()
            if v != getattr(expected, k)
        }
        raise ValueError(
            f"the checkpoint at {path} holds a model of another shape than the config asks for "
            f"(field: (checkpoint, config)) {diff}. Use another --workdir, delete {path}, or set "
            "the config's model to match."
        )


def save_model(path: str, model: nnx.Module, extra: dict[str, Any] | None = None) -> None:
    """Write `model` (config + parameters) to `path`, replacing what was there."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), params, force=True)
        ckptr.wait_until_finished()
    family = "decoder" if isinstance(model, Decoder) else "t5"
    meta = {"family": family, "config": model.cfg.to_dict(), **(extra or {})}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_model(path: str, *, expected=None, dtype=None) -> nnx.Module:
    """Read a model written by `save_model`; with `expected`, check its shape first."""
    path = os.path.abspath(path)
    if not has_model(path):
        raise FileNotFoundError(
            f"no model checkpoint at {path} (expected {CONFIG_FILE} and params/)"
        )
    if expected is not None:
        check_model_config(path, expected)
    cfg = read_model_config(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = nnx.eval_shape(lambda: build_model(cfg, **kwargs))
    abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), abstract)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model
