"""Where a run's models and tokenizer come from, checked against each other before anything
compiles (the trainer and `python -m gkd_jax.evaluate` both load through here).

  obtain_model       a config's model source (config.teacher, config.init): a Hugging Face
                     directory or hub id, our checkpoint (a path or `builtin:...`), or with
                     checkpoint="" WORKDIR/NAME/model, trained there first by the source's recipe
  expected_shape     the decoder shape a config asks of a source (None: the source brings its own)
  source_model_config  a source's config dataclass, read without its weights
  init_layers        config.init.layers parsed: the source layers the student is made of
  shared_vocab_size  the vocabulary the loss compares: both models' logits cut to the smaller
  hf_tokenizer       a Hugging Face tokenizer and its stop ids
  char_tokenizer     the task's character tokenizer in a directory (built there when missing)
  load_or_build_tokenizer  training's: config.tokenizer, else the character tokenizer
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import ml_collections
from jax.sharding import Mesh

from gkd_jax.config.loading import load_config_file
from gkd_jax.data.char_tokenizer import build_char_tokenizer, load_tokenizer
from gkd_jax.data.hf_tokenizer import check_same_vocabulary, load_hf_tokenizer, stop_ids
from gkd_jax.data.resources import BUILTIN, is_hf_source, resolve_model_dir, resolve_path
from gkd_jax.models import DecoderConfig
from gkd_jax.models.hf import family_for_model_type, load_pretrained, read_hf_config
from gkd_jax.models.prune import keep_layers, parse_layers
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import distributed
from gkd_jax.parallel.distributed import log
from gkd_jax.training import checkpoint


# ---------------------------------------------------------------------------- models
def model_config(config_model: ml_collections.ConfigDict) -> DecoderConfig:
    """config.model (or a source's `model`) as the decoder's shape."""
    return DecoderConfig(**config_model.to_dict())


def expected_shape(checkpoint_spec: str, config_model) -> DecoderConfig | None:
    """The decoder shape a config asks of a model source, or None where the source brings its
    own: a Hugging Face model, or our checkpoint of another family (a T5 an SFT stage wrote to
    WORKDIR/model), which `config.model`'s decoder fields do not describe."""
    if is_hf_source(checkpoint_spec):
        return None
    path = resolve_path(checkpoint_spec) if checkpoint_spec else ""
    if path and checkpoint.has_model(path):
        if not isinstance(checkpoint.read_model_config(path), DecoderConfig):
            return None
    return model_config(config_model)


def source_model_config(checkpoint_spec: str) -> DecoderConfig | T5Config:
    """The config dataclass (DecoderConfig or T5Config) of a model source, from its config.json
    or our checkpoint's metadata: no weights are read (a hub id is fetched into the cache)."""
    if is_hf_source(checkpoint_spec):
        hf = read_hf_config(resolve_model_dir(checkpoint_spec))
        return family_for_model_type(hf.get("model_type")).config_from_hf(hf)
    path = resolve_path(checkpoint_spec)
    if not checkpoint.has_model(path):
        raise FileNotFoundError(f"no model at {path} (neither our checkpoint nor a HF directory)")
    return checkpoint.read_model_config(path)


def init_layers(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """config.init.layers as indices (() = off); .get: a config may build its init section
    without the field."""
    return parse_layers(config.init.get("layers", ""))


def obtain_model(
    spec,
    workdir: str,
    name: str,
    dtype,
    expected=None,
    mesh: Mesh | None = None,
    *,
    train: Callable[[ml_collections.ConfigDict, str], object] | None = None,
    param_dtype=None,
    layers: Sequence[int] = (),
):
    """Load the model a spec names: a Hugging Face directory or hub id, or our checkpoint (whose
    shape must be `expected`, when given). With `checkpoint=""` it lives in WORKDIR/NAME/model
    and, when missing, is first made there by `train(recipe config, WORKDIR/NAME)` (the
    trainer's train_and_evaluate). With `mesh`, each parameter is read straight into its
    sharding (sharding.py); `param_dtype` is the parameters' dtype (None: float32).

    `layers` (config.init.layers): the model made of those layers of the source (models/
    prune.py). A Hugging Face source reads only them; our checkpoint is restored whole (on the
    mesh, in param_dtype: the full source's parameters for a moment), then cut, the dropped
    layers freed. `expected` is then the source's shape, not the cut model's."""
    kw = {} if param_dtype is None else {"param_dtype": param_dtype}
    if is_hf_source(spec.checkpoint):
        log(f"[{name}] loading Hugging Face checkpoint {spec.checkpoint}")
        return load_pretrained(spec.checkpoint, dtype=dtype, mesh=mesh, layers=layers, **kw)
    if spec.checkpoint:
        path = resolve_path(spec.checkpoint)
        if not checkpoint.has_model(path):
            raise FileNotFoundError(
                f"config.{name}.checkpoint: no model at {path} (neither our checkpoint nor a "
                f"Hugging Face directory). Make one with `python -m gkd_jax.train --config="
                f"{spec.recipe or 'CONFIG'} --workdir=DIR` and pass DIR/model, or set "
                f"--config.{name}.checkpoint= to train it in the workdir."
            )
        model = checkpoint.load_model(path, expected=expected, dtype=dtype, mesh=mesh, **kw)
        return keep_layers(model, layers) if layers else model
    run_dir = os.path.join(workdir, name)
    path = os.path.join(run_dir, "model")
    if not checkpoint.has_model(path):
        if not spec.recipe:
            raise FileNotFoundError(f"config.{name}: no model at {path} and no recipe to make it")
        if train is None:
            raise FileNotFoundError(
                f"config.{name}: no model at {path}; make it with `python -m gkd_jax.train "
                f"--config={spec.recipe} --workdir={run_dir}`"
            )
        log(f"[{name}] no model at {path}: training it with {spec.recipe}")
        train(load_config_file(spec.recipe), run_dir)
    model = checkpoint.load_model(path, expected=expected, dtype=dtype, mesh=mesh, **kw)
    return keep_layers(model, layers) if layers else model


def shared_vocab_size(config, tokenizer, student, teacher) -> int:
    """The vocabulary the loss compares: both models' logits cut to the smaller table. Tables
    may differ only by padding rows past the tokenizer, and the tokenizers must agree."""
    n_tok, v_s = len(tokenizer), student.cfg.vocab_size
    v_t = v_s if teacher is None else teacher.cfg.vocab_size
    if min(v_s, v_t) < n_tok:
        # transformers adds tokens (e.g. a default <|endoftext|>) past the model's table; that is
        # harmless unless the data use them, which `check_token_ids` rejects.
        log(f"[vocab] the tokenizer has {n_tok} tokens, the model(s) {min(v_s, v_t)} logits")
    if teacher is None:
        return v_s
    source = config.teacher.checkpoint
    if is_hf_source(source):
        teacher_dir = resolve_model_dir(source)
        if os.path.exists(os.path.join(teacher_dir, "tokenizer_config.json")):
            teacher_tok = load_hf_tokenizer(teacher_dir)
            check_same_vocabulary(
                tokenizer, teacher_tok, config.tokenizer, source, limit=min(v_s, v_t)
            )
        elif v_s != v_t:
            raise ValueError(
                f"teacher ({v_t} logits) and student ({v_s}) differ in vocabulary size and "
                f"{teacher_dir} has no tokenizer to prove they share one"
            )
    elif v_s != v_t:
        raise ValueError(
            f"teacher ({v_t} logits) and student ({v_s}) vocabularies differ: they must share one"
        )
    if v_s != v_t:
        log(f"[vocab] teacher {v_t} / student {v_s} logits: comparing the first {min(v_s, v_t)}")
    return min(v_s, v_t)


# ---------------------------------------------------------------------------- tokenizers
def hf_tokenizer(source: str, *model_dirs: str):
    """(tokenizer, stop ids) of a Hugging Face tokenizer directory, hub id or `builtin:` path:
    its EOS plus the eos ids in its own and `model_dirs`' generation_config.json."""
    source = resolve_path(source) if source.startswith(BUILTIN) else source
    tokenizer = load_hf_tokenizer(source)
    return tokenizer, stop_ids(tokenizer, resolve_model_dir(source), *model_dirs)


def char_tokenizer(path: str):
    """(tokenizer, stop ids) of the task's character tokenizer in `path`; process 0 builds it
    there first when missing."""
    if distributed.is_main_process() and not os.path.exists(os.path.join(path, "tokenizer.json")):
        build_char_tokenizer(path)
    distributed.barrier("tokenizer")  # the others read what process 0 wrote
    tokenizer = load_tokenizer(path)
    return tokenizer, (tokenizer.eos_token_id,)


def load_or_build_tokenizer(config, workdir: str):
    """(tokenizer, stop ids): `config.tokenizer` names a Hugging Face tokenizer directory (or hub
    id); empty builds the task's character tokenizer in the workdir."""
    copy = os.path.join(workdir, "tokenizer")
    if not config.tokenizer:
        return char_tokenizer(copy)
    init = config.init.checkpoint
    tokenizer, stops = hf_tokenizer(
        config.tokenizer, *([resolve_model_dir(init)] if is_hf_source(init) else [])
    )
    # A copy beside the checkpoints, so `python -m gkd_jax.export` finds it with its stops.
    if distributed.is_main_process():
        tokenizer.save_pretrained(copy)
        with open(os.path.join(copy, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": list(stops)}, f)
    return tokenizer, stops
