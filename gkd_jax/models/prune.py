"""A student made from its teacher's layers (config.init.layers): the prune-then-distill start of
Minitron-style recipes. The student is a copy of some of the source's decoder layers, in the
order given and re-indexed 0..n-1, plus its embeddings, final norm and head.

  parse_layers     "0-19,26-29" (or a sequence of ints) -> (0, 1, ..., 19, 26, ..., 29)
  pruned_config    the source's DecoderConfig cut to those layers (each keeps its sliding flag)
  select_layers    a {path: x} map of the source's parameters -> the kept layers' under new indices
  keep_layers      a loaded Decoder -> the pruned Decoder holding the same arrays (no copy)

Decoder-only: an encoder-decoder (T5) source is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from flax import nnx

from gkd_jax.models.decoder import Decoder, DecoderConfig

FORM = "comma-separated layer indices and inclusive ranges, e.g. '0-19,26-29' ('' = off)"


def _index(text: str, part: str) -> int:
    # isdigit, not int(): int() takes "-3" and "+3", neither of which is an index here.
    if not text.isdigit():
        raise ValueError(f"{part!r} is not a layer index (an integer >= 0) or a range a-b: {FORM}")
    return int(text)


def _parse_string(spec: str) -> list[int]:
    if not spec.strip():
        return []
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ValueError(f"has an empty entry between commas: {FORM}")
        start, dash, stop = part.partition("-")
        if not dash:
            out.append(_index(part, part))
            continue
        a, b = _index(start.strip(), part), _index(stop.strip(), part)
        if a > b:
            raise ValueError(f"range {part!r} runs backwards (a range a-b needs a <= b)")
        out.extend(range(a, b + 1))
    return out


def parse_layers(spec: str | Sequence[int], num_layers: int | None = None) -> tuple[int, ...]:
    """The layer indices `spec` names, in its order: a string of indices and inclusive ranges
    ("0-19,26-29"; "" = none), or a sequence of ints (a Python config). With `num_layers` (the
    source's), every index must be below it. ValueError says what is wrong, without the field."""
    if isinstance(spec, str):
        layers = _parse_string(spec)
    elif isinstance(spec, (list, tuple)):
        layers = list(spec)
        for x in layers:
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"{x!r} is not a layer index (an integer >= 0): {FORM}")
    else:
        raise ValueError(f"must be a string: {FORM}")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise ValueError(f"names layer(s) {repeated} more than once: each layer at most once")
    if num_layers is not None:
        outside = [i for i in layers if i >= num_layers]
        if outside:
            raise ValueError(
                f"layer(s) {outside} are out of range: the source has {num_layers} layers "
                f"(0-{num_layers - 1})"
            )
    return tuple(layers)


def pruned_config(cfg: Any, layers: Sequence[int]) -> DecoderConfig:
    """`cfg` (the source's) with only `layers`, each keeping its own sliding-window flag. As
    hf_decoder.config_from_hf writes it: sliding_layers None when every kept layer slides, and no
    window at all when none does, so the exported model loads back to this very config."""
    if not isinstance(cfg, DecoderConfig):
        raise ValueError(
            f"needs a decoder-only source; this one is a {type(cfg).__name__} "
            "(encoder-decoder models such as T5 cannot be pruned by layer list)"
        )
    layers = parse_layers(layers, cfg.num_layers)
    if not layers:
        raise ValueError(f"names no layer: {FORM}")
    slides = [cfg.slides(i) for i in layers]
    window, sliding = cfg.sliding_window, None
    if window is not None and not any(slides):
        window = None
    elif window is not None and not all(slides):
        sliding = tuple(slides)
    return dataclasses.replace(
        cfg, num_layers=len(layers), sliding_layers=sliding, sliding_window=window
    )


def select_layers(tree: dict[tuple, Any], layers: Sequence[int]) -> dict[tuple, Any]:
    """{path: x} over the source's parameters (paths as tuples, ("layers", i, ...) for layer i)
    -> the same for the pruned model: layer layers[j]'s entries under ("layers", j, ...), every
    other layer's dropped, the rest (embeddings, final norm, head) as they are."""
    new_index = {i: j for j, i in enumerate(layers)}
    out = {}
    for path, x in tree.items():
        if path[0] != "layers":
            out[path] = x
        elif path[1] in new_index:
            out[("layers", new_index[path[1]], *path[2:])] = x
    return out


def keep_layers(model: Decoder, layers: Sequence[int]) -> Decoder:
    """A Decoder of `pruned_config(model.cfg, layers)` holding `model`'s own arrays (moved, not
    copied, shardings kept): the dropped layers are freed with `model`. Call before LoRA and
    remat are set (the trainer does)."""
    if not isinstance(model, Decoder):
        raise ValueError(
            f"config.init.layers needs a decoder-only model, not a {type(model).__name__}"
        )
    cfg = pruned_config(model.cfg, layers)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params["layers"] = {j: params["layers"][i] for j, i in enumerate(layers)}
    param_dtype = params["embed_tokens"]["embedding"].dtype
    pruned = nnx.eval_shape(
        lambda: Decoder(cfg, dtype=model.dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    )
    state = nnx.state(pruned, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(pruned, state)
    return pruned
