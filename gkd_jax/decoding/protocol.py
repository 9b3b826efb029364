"""What a decoder and a model family agree on: the `Decoding` pair a family provides, and the
settings every decoder (sampling.py, beam_search.py) shares.

Models build a `Decoding` (models/decoder.py, models/t5.py); decoders run it. Neither imports
the other: both import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple


class Decoding(NamedTuple):
    """How a model family decodes, as two pure functions (the decoders know nothing else):

    prefill(params, prompt [B, P], prompt_mask [B, P], max_new_tokens) -> (logits [B, V], state)
        reads the prompt; logits predict the first new token; `max_new_tokens` is static.
    step(params, tokens [B], index [], state) -> (logits [B, V], state)
        feeds back new token number `index` (0-based); logits predict the next one.
    """

    prefill: Callable
    step: Callable


@dataclasses.dataclass(frozen=True)
class DecodeLength:
    max_new_tokens: int

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig(DecodeLength):
    """The settings every decoder has. A decoder's config subclasses this and, first, a
    `DecodeLength` holding its own knobs, so that its fields read in the order
    `max_new_tokens, <its knobs>, stop_ids, pad_id, vocab_size` (dataclasses order fields from
    the last base to the first): `SamplingConfig(48, 0.7)` is max_new_tokens, temperature."""

    stop_ids: tuple[int, ...] = ()  # a row ends with the first of these it emits
    pad_id: int = 0  # written after a row's stop token
    vocab_size: int = 0  # > 0: decode only among the first vocab_size ids (a shared vocabulary)
