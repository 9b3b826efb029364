"""What evaluation shares between the trainer and `python -m gkd_jax.evaluate`: the decoder that
config.eval.decoding names, and a task's scores of decoded texts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gkd_jax.beam_search import BeamSearchConfig, make_beam_search
from gkd_jax.sampling import Decoding, SamplingConfig, make_sampler

DECODINGS = ("greedy", "beam", "sample")
# config.eval.early_stopping -> BeamSearchConfig.early_stopping (transformers' values)
EARLY_STOPPING = {"never": "never", "heuristic": False, "k_finished": True}


def make_eval_decoder(
    decoding: Decoding, config, *, stop_ids: Sequence[int], pad_id: int, vocab_size: int
) -> Callable:
    """Jitted `decode(params, prompt [B, P], prompt_mask [B, P], rng) -> tokens/mask [B, N]`
    as config.eval.decoding says, `config.max_new_tokens` long, over the first `vocab_size`
    ids. The rng matters to "sample" only."""
    e = config.eval
    common = dict(stop_ids=tuple(stop_ids), pad_id=pad_id, vocab_size=vocab_size)
    if e.decoding == "beam":
        cfg = BeamSearchConfig(
            max_new_tokens=config.max_new_tokens,
            beam_size=e.beam_size,
            length_penalty=e.length_penalty,
            length_penalty_form=e.length_penalty_form,
            early_stopping=EARLY_STOPPING[e.early_stopping],
            **common,
        )
        return make_beam_search(decoding, cfg)
    temperature = 0.0 if e.decoding == "greedy" else e.temperature
    return make_sampler(decoding, SamplingConfig(config.max_new_tokens, temperature, **common))


def describe_decoding(config) -> str:
    """One line for logs and tables: 'greedy', 'beam 4 (t5x, alpha 0.6)', 'sample (T=1.0)'."""
    e = config.eval
    if e.decoding == "beam":
        stop = "" if e.early_stopping == "never" else f", {e.early_stopping}"
        return f"beam {e.beam_size} ({e.length_penalty_form}, alpha {e.length_penalty}{stop})"
    if e.decoding == "sample":
        return f"sample (T={e.temperature})"
    return e.decoding


def task_scores(task, texts: list[str], references: list) -> dict[str, float]:
    """{task.metric_name: task.metric(...)} plus the task's extra metrics (ROUGE-1/2/L beside
    ROUGE-2, ...). A task without a metric (scored against a teacher) gives {}."""
    if task.metric is None:
        return {}
    scores = {task.metric_name: float(task.metric(texts, references))}
    if task.extra_metrics is not None:
        scores |= {k: float(v) for k, v in task.extra_metrics(texts, references).items()}
    return scores
