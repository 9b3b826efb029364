"""Tests for gkd_jax.decoding.beam_search: transformers parity, brute force, greedy, stops, jit.

References: (1) transformers' `generate(num_beams=K, do_sample=False, ...)` on tiny random Llama
and T5 models that the test saves with `save_pretrained` and we load with `load_pretrained`;
(2) an exhaustive numpy search on a bigram "model" (a fixed logits table indexed by the previous
token) with enough beams that beam search must find the best penalized sequence; (3) the greedy
sampler, which beam_size=1 equals.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gkd_jax.config.defaults import base_config
from gkd_jax.decoding.beam_search import BeamSearchConfig, _passed_through, make_beam_search
from gkd_jax.decoding.sampling import Decoding, SamplingConfig, make_sampler
from gkd_jax.evaluation.evaluator import make_eval_decoder
from gkd_jax.models import functional_lm
from gkd_jax.models.hf import load_pretrained

transformers = pytest.importorskip("transformers")

V, EOS, PAD = 64, 2, 0
B, P, N, K = 4, 6, 10, 3


# ---------------------------------------------------------------- tiny Hugging Face models


def randomize(model, seed: int, eos_scale: float):
    """Random weights (norms around 1); the EOS row of the head scaled up so that hypotheses
    stop at varied lengths instead of never."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if "norm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.3 * z)
            elif "embed" in name or "shared" in name:
                p.copy_(0.5 * z)
            elif "relative_attention_bias" in name:
                p.copy_(z)
            else:
                p.copy_(z / np.sqrt(p.shape[-1]))
        model.lm_head.weight[EOS] *= eos_scale
    return model.eval()


@functools.cache
def llama(tmp_dir: str):
    config = transformers.AutoConfig.for_model(
        model_type="llama",
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    model = randomize(model, 0, eos_scale=3.0)
    model.save_pretrained(tmp_dir)
    return model, functional_lm(load_pretrained(tmp_dir))


@functools.cache
def t5(tmp_dir: str):
    config = transformers.T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    model = randomize(transformers.T5ForConditionalGeneration(config), 1, eos_scale=3.0)
    model.save_pretrained(tmp_dir)
    return model, functional_lm(load_pretrained(tmp_dir))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


def prompts(seed: int = 0, lengths=(6, 4, 2, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [B, P] of distinct lengths, no EOS or PAD inside."""
    rng = np.random.default_rng(seed)
    prompt, mask = np.full((B, P), PAD, np.int32), np.zeros((B, P), bool)
    for i, m in enumerate(lengths):
        prompt[i, P - m :] = rng.integers(3, V, m)
        mask[i, P - m :] = True
    return prompt, mask


def hf_beam_search(model, prompt, mask, *, encoder_decoder, **kw) -> np.ndarray:
    """transformers' beam search, cut to the generated tokens [B, N] and padded with PAD after
    the first EOS (it fills with EOS when pad_token_id is 0: `pad or eos` reads 0 as unset)."""
    with torch.no_grad():
        if encoder_decoder:  # unpadded prompts, one at a time: no encoder padding to match
            rows = []
            for p, m in zip(prompt, mask, strict=True):
                ids = torch.from_numpy(p[m][None].astype(np.int64))
                rows.append(model.generate(ids, decoder_start_token_id=PAD, **kw)[0, 1:])
            out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=EOS)
        else:
            out = model.generate(
                input_ids=torch.from_numpy(prompt.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                **kw,
            )[:, prompt.shape[1] :]
    out = out.numpy()
    out = np.pad(out, ((0, 0), (0, N - out.shape[1])), constant_values=EOS)
    after_eos = np.cumsum(np.cumsum(out == EOS, axis=1), axis=1) > 1  # past the first EOS
    return np.where(after_eos, PAD, out)


def hf_kwargs(cfg: BeamSearchConfig) -> dict:
    return dict(
        num_beams=cfg.beam_size,
        do_sample=False,
        length_penalty=cfg.length_penalty,
        early_stopping=cfg.early_stopping,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=EOS,
        pad_token_id=PAD,
        num_return_sequences=1,
    )


@functools.cache
def search_fn(decoding, cfg: BeamSearchConfig):
    return make_beam_search(decoding, cfg)


def slow(*values):
    return pytest.param(*values, marks=pytest.mark.slow)


# (early_stopping, length_penalty). "never" and False give different tokens at alpha 1 (row 1
# of these prompts): the exact bound and transformers' heuristic both need testing.
HF_CASES = [
    ("never", 1.0),
    slow(False, 1.0),  # by config below, in test_eval_config_reproduces_generate_defaults
    slow(True, 0.0),
    slow("never", 0.6),
    slow("never", -0.5),
    slow(False, 0.6),
]


@pytest.mark.parametrize("early_stopping, alpha", HF_CASES)
def test_decoder_matches_transformers(model_dir, early_stopping, alpha):
    torch_model, (params, fns) = llama(model_dir + "/llama")
    cfg = BeamSearchConfig(N, K, alpha, "hf", early_stopping, (EOS,), PAD)
    prompt, mask = prompts()
    out = search_fn(fns.decoding, cfg)(params, jnp.asarray(prompt), jnp.asarray(mask), None)
    ref = hf_beam_search(torch_model, prompt, mask, encoder_decoder=False, **hf_kwargs(cfg))
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens, ref)
    lengths = np.asarray(out.mask).sum(axis=1)
    assert len(set(lengths.tolist())) > 2  # stops at varied lengths, some never
    ends = tokens[np.arange(B), lengths - 1]
    assert ((ends == EOS) | (lengths == N)).all()


@pytest.mark.parametrize("early_stopping, alpha", [("never", 0.6), slow(True, 1.0)])
def test_t5_matches_transformers(model_dir, early_stopping, alpha):
    torch_model, (params, fns) = t5(model_dir + "/t5")
    cfg = BeamSearchConfig(N, K, alpha, "hf", early_stopping, (EOS,), PAD)
    prompt, mask = prompts(1)
    out = search_fn(fns.decoding, cfg)(params, jnp.asarray(prompt), jnp.asarray(mask), None)
    ref = hf_beam_search(torch_model, prompt, mask, encoder_decoder=True, **hf_kwargs(cfg))
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert (np.asarray(out.mask).sum(axis=1) < N).any()


def test_only_the_state_step_changes_is_reordered(model_dir):
    """T5's encoder output and mask pass through `step` untouched: the same for every beam of
    an example, they are not copied per step; its self-attention cache is."""
    _, (params, fns) = t5(model_dir + "/t5")
    prompt, mask = prompts(1)
    prefill = functools.partial(fns.decoding.prefill, max_new_tokens=N)
    _, state = jax.eval_shape(prefill, params, jnp.asarray(prompt), jnp.asarray(mask))
    cache, cross, _ = state
    kept = _passed_through(fns.decoding.step, params, jnp.zeros((B,), jnp.int32), state)
    n_cache, n_cross = len(jax.tree.leaves(cache)), len(jax.tree.leaves(cross))
    assert kept == [False] * n_cache + [True] * (n_cross + 1)


def test_eval_config_reproduces_generate_defaults(model_dir):
    """config.eval fields that give transformers' generate(num_beams=K) with its defaults
    (length_penalty 1.0, early_stopping False)."""
    torch_model, (params, fns) = llama(model_dir + "/llama")
    config = base_config()
    config.max_new_tokens = N
    e = config.eval
    e.decoding, e.beam_size, e.length_penalty = "beam", K, 1.0
    e.length_penalty_form, e.early_stopping = "hf", "heuristic"
    search = make_eval_decoder(fns.decoding, config, stop_ids=(EOS,), pad_id=PAD, vocab_size=V)
    prompt, mask = prompts()
    out = search(params, jnp.asarray(prompt), jnp.asarray(mask), jax.random.key(0))
    kw = dict(num_beams=K, max_new_tokens=N, eos_token_id=EOS, pad_token_id=PAD)
    ref = hf_beam_search(torch_model, prompt, mask, encoder_decoder=False, **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_beam_size_one_is_greedy(model_dir):
    _, (params, fns) = llama(model_dir + "/llama")
    prompt, mask = prompts(2)
    # vocab_size: both keep to the first 40 ids (the argmax over all 64 differs for some row).
    greedy = make_sampler(
        fns.decoding, SamplingConfig(N, temperature=0.0, stop_ids=(EOS,), vocab_size=40)
    )(params, prompt, mask, jax.random.key(0))
    beam = search_fn(fns.decoding, BeamSearchConfig(N, 1, 0.6, stop_ids=(EOS,), vocab_size=40))(
        params, prompt, mask, None
    )
    np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(greedy.tokens))
    np.testing.assert_array_equal(np.asarray(beam.mask), np.asarray(greedy.mask))
    assert np.asarray(beam.tokens).max() < 40


# ---------------------------------------------------------------- a bigram model, brute force

BV = 5  # bigram vocabulary; id 0 stops


def bigram_table(seed: int) -> np.ndarray:
    return (2.0 * np.random.default_rng(seed).standard_normal((BV, BV))).astype(np.float32)


def bigram_decoding() -> Decoding:
    """Next-token logits = table[previous token]; the state is the previous token [B]."""

    def prefill(table, prompt, prompt_mask, max_new_tokens):
        del prompt_mask, max_new_tokens
        last = prompt[:, -1]
        return table[last], last

    def step(table, tokens, index, state):
        del index, state
        return table[tokens], tokens

    return Decoding(prefill, step)


def penalty(length: int, alpha: float, form: str) -> float:
    return ((5.0 + length) / 6.0) ** alpha if form == "t5x" else float(length) ** alpha


def brute_force(table, first: int, n: int, alpha: float, form: str, vocab: int):
    """The best sequence by sum log p / penalty(length) among all that stop at id 0 or run to n
    tokens, by enumeration (float64)."""
    logp = table[:, :vocab].astype(np.float64)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    best, best_seq = -np.inf, None
    for length in range(1, n + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if 0 in seq[:-1] or (length < n and seq[-1] != 0):
                continue  # stops before its end, or ends short without stopping
            prev, total = first, 0.0
            for t in seq:
                total, prev = total + logp[prev, t], t
            score = total / penalty(length, alpha, form)
            if score > best:
                best, best_seq = score, seq
    return best, list(best_seq)


@pytest.mark.parametrize(
    "form, alpha, vocab",
    [("t5x", 0.6, BV), ("hf", 0.0, 4), slow("t5x", 2.0, 4), slow("hf", 1.0, BV)],
)
def test_many_beams_find_the_brute_force_best(form, alpha, vocab):
    # Every prefix of up to n - 1 tokens fits in the beam: nothing good can be pruned.
    n, k = 4, BV**3
    table = bigram_table(0)
    prompt = jnp.asarray([[1, 3], [2, 4], [4, 1]], jnp.int32)
    cfg = BeamSearchConfig(n, k, alpha, form, "never", (0,), pad_id=9, vocab_size=vocab)
    out = search_fn(bigram_decoding(), cfg)(jnp.asarray(table), prompt, jnp.ones_like(prompt), 0)
    for i, first in enumerate(np.asarray(prompt[:, -1])):
        score, seq = brute_force(table, first, n, alpha, form, vocab)
        m = np.asarray(out.mask[i])
        assert np.asarray(out.tokens[i])[m].tolist() == seq, f"row {i}"
        assert (np.asarray(out.tokens[i])[~m] == 9).all()
        np.testing.assert_allclose(float(out.scores[i]), score, rtol=1e-5)


def test_early_exit_when_every_example_is_settled():
    table = np.zeros((BV, BV), np.float32)
    table[:, 0] = 4.0  # stopping is by far the likeliest continuation everywhere
    cfg = BeamSearchConfig(12, 2, 0.6, "t5x", "never", (0,))
    prompt = jnp.asarray([[1], [3]], jnp.int32)
    out = search_fn(bigram_decoding(), cfg)(jnp.asarray(table), prompt, jnp.ones_like(prompt), 0)
    assert int(out.num_steps) < 12
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, :1], 0)
    np.testing.assert_array_equal(np.asarray(out.mask).sum(axis=1), [1, 1])


def test_one_compilation_per_shape():
    traces = []

    def prefill(table, prompt, prompt_mask, max_new_tokens):
        traces.append("prefill")
        return bigram_decoding().prefill(table, prompt, prompt_mask, max_new_tokens)

    search = make_beam_search(Decoding(prefill, bigram_decoding().step), BeamSearchConfig(5, 3))
    prompt = jnp.asarray([[1, 2], [3, 4]], jnp.int32)
    for seed in range(3):
        table = jnp.asarray(bigram_table(seed))
        jax.block_until_ready(search(table, prompt + seed % 2, jnp.ones_like(prompt), None))
    assert search._cache_size() == 1 and traces == ["prefill"]


def test_state_must_be_batch_major():
    def prefill(table, prompt, prompt_mask, max_new_tokens):
        return table[prompt[:, -1]], jnp.zeros((7, 2))  # a leaf whose rows are not examples

    search = make_beam_search(Decoding(prefill, bigram_decoding().step), BeamSearchConfig(3, 2))
    prompt = jnp.asarray([[1], [2]], jnp.int32)
    with pytest.raises(ValueError, match="batch-major"):
        search(jnp.asarray(bigram_table(0)), prompt, jnp.ones_like(prompt), None)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(beam_size=0), "beam_size"),
        (dict(length_penalty_form="gnmt"), "length_penalty_form"),
        (dict(early_stopping="always"), "early_stopping"),
        (dict(early_stopping=1), "early_stopping"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        BeamSearchConfig(**(dict(max_new_tokens=4) | kw))


def test_config_accepts_every_early_stopping_value():
    never = "".join(["ne", "ver"])  # built at run time, as a parsed flag is: not interned
    for value in (True, False, never):
        assert BeamSearchConfig(4, early_stopping=value).early_stopping == value
