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
from jax.sharding import Mesh

from gkd_jax.models import lora
from gkd_jax.models.decoder import Decoder, DecoderConfig
from gkd_jax.models.hf import build_model
from gkd_jax.parallel import distributed, sharding

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
    """Write `model` (config + parameters) to `path`, replacing what was there. In a multi-host
    run every process calls this (orbax saves collectively); process 0 writes the config."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), params, force=True)
        ckptr.wait_until_finished()
    family = "decoder" if isinstance(model, Decoder) else "t5"
    meta = {"family": family, "config": model.cfg.to_dict(), **(extra or {})}
    if distributed.is_main_process():
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2)
    distributed.barrier("save_model")  # no process reads the model before its config exists


def load_model(
    path: str, *, expected=None, dtype=None, mesh: Mesh | None = None, param_dtype=None
) -> nnx.Module:
    """Read a model written by `save_model`; with `expected`, check its shape first. With `mesh`,
    orbax restores each parameter straight into its sharding (gkd_jax/parallel/sharding.py rules);
    with
    `param_dtype`, in that dtype (default float32)."""
    path = os.path.abspath(path)
    if not has_model(path):
        raise FileNotFoundError(
            f"no model checkpoint at {path} (expected {CONFIG_FILE} and params/)"
        )
    if expected is not None:
        check_model_config(path, expected)
    cfg = read_model_config(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if param_dtype is not None:
        kwargs["param_dtype"] = param_dtype
    model = nnx.eval_shape(lambda: build_model(cfg, **kwargs))
    abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
    if mesh is not None:
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            sharding.tree_shardings(abstract, mesh),
        )
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), abstract)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


# ---------------------------------------------------------------------------- train state
def saved_part(state: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(what a train-state checkpoint holds, the frozen parameters it leaves out): everything,
    None; with a LoRA student (models/lora.py) its adapters, optimizer state and step, and the
    base parameters, which every start reads again from config.init."""
    trainable, frozen = lora.split_trainable(state["params"])
    return dict(state, params=trainable), frozen


class TrainCheckpoints:
    """Train-state checkpoints in one directory (WORKDIR/checkpoints): STEP/state holds the
    student's parameters, optimizer state and step, STEP/meta a JSON of host-side values.

    The step is the whole RNG state and data position: the trainer derives each step's
    sampling key, lmbda draws and batch from (config.seed, step). Orbax writes a checkpoint
    into `STEP.orbax-checkpoint-tmp` and renames it when complete, so a crash mid-save leaves
    the previous one as the latest (leftover temporary directories are deleted on open).
    Saves copy the arrays to host memory, then write in a background thread.
    """

    def __init__(self, directory: str, *, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the shapes, dtypes and shardings of `like` (a state
        pytree of arrays already placed as the run needs them): restored straight there. A
        LoRA student's frozen base parameters are `like`'s (they are not saved)."""
        saved_like, frozen = saved_part(like)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saved_like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        state = self._manager.restore(step, args=args)["state"]
        return dict(state, params=lora.join(state["params"], frozen))

    def restore_latest(self, like: Any, *, max_step: int) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of the latest checkpoint, restored into `like`'s shardings; (like, {})
        when there is none. Raises, naming the fix, if it does not fit `like` or is past
        `max_step` (the config's steps)."""
        step = self.latest_step()
        if step is None:
            return like, {}
        fix = f"use another --workdir, or delete {self.directory} to start over"
        if step > max_step:
            raise ValueError(
                f"the train-state checkpoint {self.path(step)} is at step {step}, past "
                f"config.steps={max_step}: raise config.steps, or {fix}"
            )
        try:
            state = self.restore(step, like)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"the train-state checkpoint {self.path(step)} does not fit this config's model "
                f"and optimizer ({type(e).__name__}: {str(e)[:500]}): {fix}"
            ) from e
        return state, self.read_meta(step)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving `state` as `step` (no-op if that step is saved already); returns once
        the arrays are copied to host, so the caller may donate them to the next step."""
        if step in self._manager.all_steps():
            return
        state = saved_part(state)[0]
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()  # waits for a save in flight

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
