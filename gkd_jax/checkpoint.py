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

from gkd_jax.models import Decoder, DecoderConfig, build_decoder

CONFIG_FILE = "model_config.json"


def has_model(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
        os.path.join(path, "params")
    )


def read_model_config(path: str) -> DecoderConfig:
    with open(os.path.join(path, CONFIG_FILE)) as f:
        return DecoderConfig(**json.load(f)["config"])


def check_model_config(path: str, expected: DecoderConfig) -> None:
    """Raise if the checkpoint at `path` holds a model of another shape than `expected`."""
    found = read_model_config(path)
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


def save_model(path: str, model: Decoder, extra: dict[str, Any] | None = None) -> None:
    """Write `model` (config + parameters) to `path`, replacing what was there."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), params, force=True)
        ckptr.wait_until_finished()
    meta = {"family": "decoder", "config": model.cfg.to_dict(), **(extra or {})}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_model(path: str, *, expected: DecoderConfig | None = None, dtype=None) -> Decoder:
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
    model = nnx.eval_shape(lambda: build_decoder(cfg, **kwargs))
    abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), abstract)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model
