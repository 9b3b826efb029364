"""The functional view of any model family: what the trainer, sampler and evaluator call.

A family (decoder-only, encoder-decoder) provides `score` and a `Decoding` (decoder.py's
`decoder_functions`, t5.py's `t5_functions`); everything above the models (the GKD step, the
sampler, evaluation) is written against these alone, so a T5 teacher and a decoder-only
student, or any other pairing with one vocabulary, need no special case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from gkd_jax.decoding.protocol import Decoding


@dataclasses.dataclass(frozen=True)
class LMFunctions:
    """Pure functions over a model's parameter pytree.

    score(params, prompt [B, P], prompt_mask [B, P], completion [B, N], completion_mask [B, N])
        -> logits [B, N, V] float32; row n predicts completion token n given the prompt and the
        completion tokens before it. Prompts are left-padded, completions right-padded.
    decoding: prefill/step for the sampler.
    hidden, unembedding, final_softcap: optional, for the fused loss (loss_forms.fused_jsd_loss,
        which never holds [B, N, V]): hidden(params, prompt, prompt_mask, completion,
        completion_mask) -> [B, N, D] final hidden states of score's positions, unembedding(params)
        -> [D, V], and score's logits = softcap(hidden @ unembedding, final_softcap) (None: none).
    """

    score: Callable
    decoding: Decoding
    vocab_size: int
    hidden: Callable | None = None
    unembedding: Callable | None = None
    final_softcap: float | None = None


def shared_vocab_logits(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Keep the first `vocab_size` logits [..., V] -> [..., vocab_size].

    Checkpoints pad their embedding tables past the tokenizer (Qwen2.5-3B: 151,936 rows, 72B:
    152,064, one tokenizer of 151,665). Ids past the tokenizer are never produced by it, so
    comparing two models over the shared prefix renormalizes each over real tokens only; padding
    the smaller model with -inf instead would make forward KL infinite wherever the larger puts
    any mass on a padding id.
    """
    return logits if logits.shape[-1] == vocab_size else logits[..., :vocab_size]
