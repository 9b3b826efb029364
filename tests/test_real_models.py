"""Our decoder on real pretrained models against transformers (the independent reference):
SmolLM2-135M-Instruct (Llama, vocabulary 49,152) and Gemma 3 270M (gemma3_text, vocabulary
262,144, sliding window 512, two RoPE bases). Marked `real`: `.ci/run` runs them after the
default suite (`pytest -m real`); the models come from tests/real_models.py.

Checked per model: logits on a left-padded batch, greedy tokens through our jitted sampler vs
`generate` (for Gemma 3 across its 512-token window, with the KV cache), and the sampler's draw
frequencies at vocabulary scale against the model's own next-token softmax (filtered by a numpy
reference of top-k / top-p).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from real_models import real_model_dir
from test_sampling import ref_keep, ref_softmax

from gkd_jax.decoding.sampling import SamplingConfig, choose_tokens, filter_logits, make_sampler
from gkd_jax.models import decoder_functions, load_pretrained

scipy_stats = pytest.importorskip("scipy.stats")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.real
MODELS = ("smollm2", "gemma3")
TEXT = (
    "The river rises in the hills above the town and runs south through farmland, past the old "
    "mill, under three stone bridges and into the estuary, where the tide turns it brackish. "
)


@functools.cache
def ours(name: str):
    return load_pretrained(real_model_dir(name))


@functools.cache
def reference(name: str):
    return transformers.AutoModelForCausalLM.from_pretrained(
        real_model_dir(name), dtype=torch.float32
    ).eval()


@functools.cache
def tokenizer(name: str):
    return transformers.AutoTokenizer.from_pretrained(real_model_dir(name))


def left_padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """[B, P] ids and mask, rows right-aligned (pad id 0 on the left)."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def torch_logits(name: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = reference(name)(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


@pytest.mark.parametrize("name", MODELS)
def test_logits_on_a_padded_batch_match_transformers(name):
    tok = tokenizer(name)
    long = tok(TEXT * 2)["input_ids"]
    ids, mask = left_padded([long, long[: len(long) // 2], tok("Hello")["input_ids"]])
    ref = torch_logits(name, ids, mask)
    got = np.asarray(ours(name)(jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    err = np.abs(got - ref)[valid]
    scale = np.abs(ref[valid]).max()
    print(f"{name}: max |ours - transformers| {err.max():.2e} (logits up to {scale:.1f})")
    assert err.max() < 2e-3 * max(1.0, scale / 10), err.max()
    assert (got.argmax(-1) == ref.argmax(-1))[valid].mean() == 1.0


def greedy_ours(name: str, ids: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    params, fns = decoder_functions(ours(name))
    sampler = make_sampler(fns.decoding, SamplingConfig(n, temperature=0.0))
    out = sampler(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool), jax.random.key(0))
    return np.asarray(out.tokens)


def greedy_transformers(name: str, ids: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    with torch.no_grad():
        out = reference(name).generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=n,
            min_new_tokens=n,  # no stop: both run n steps
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].numpy()


@pytest.mark.parametrize("name", MODELS)
def test_greedy_tokens_match_generate(name):
    """Gemma 3: prompts of ~480 tokens and 64 new ones, so decoding runs past the 512-token
    window of its sliding layers (whose keys then leave the mask) with the KV cache."""
    tok = tokenizer(name)
    long = tok(TEXT * 14)["input_ids"][:480] if name == "gemma3" else tok(TEXT)["input_ids"]
    rows = [long, long[: len(long) - 17]]
    ids, mask = left_padded(rows)
    n = 64
    want = greedy_transformers(name, ids, mask, n)
    got = greedy_ours(name, ids, mask, n)
    if name == "gemma3":
        window = reference(name).config.sliding_window
        assert len(long) + n > window + 30  # the last 30+ steps attend through the window
    print(f"{name} greedy:", repr(tok.decode(got[0][:24])))
    np.testing.assert_array_equal(got, want)
    assert len(set(got[0].tolist())) > 5  # a real continuation, not one repeated token


KEY = jax.random.key(7)
SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=50),
    dict(temperature=1.0, top_p=0.9),
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "knobs", SETTINGS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items())
)
def test_sampler_frequencies_match_the_models_softmax(name, knobs):
    """The sampler's token choice at vocabulary scale on the model's real next-token logits, in
    its two stages: the top-k / top-p filter keeps exactly the numpy reference's set (one row),
    and 8,000 draws from the filtered row (Gumbel-max over the full vocabulary, 8 chunks of
    1,000 rows with fresh noise each; filtering 8,000 identical rows would cost minutes on a
    CPU) never leave that set, with Pearson's chi-square over the tokens expected >= 5 times
    each (the rest of the set pooled into one bin) not rejecting softmax(logits / T) there at
    p < 1e-6."""
    tok = tokenizer(name)
    ids, mask = left_padded([tok("The weather today is")["input_ids"]])
    logits = torch_logits(name, ids, mask)[0, -1].astype(np.float32)  # [V]
    cfg = SamplingConfig(1, **knobs)
    scaled = logits[None] / cfg.temperature  # [1, V]
    keep = ref_keep(scaled, cfg.top_k, cfg.top_p)[0]
    probs = ref_softmax(np.where(keep, scaled[0], -np.inf))
    filtered = filter_logits(jnp.asarray(scaled), cfg.top_k, cfg.top_p)  # [1, V]
    np.testing.assert_array_equal(np.asarray(filtered[0] > jnp.finfo(jnp.float32).min), keep)
    rows, chunks = 1000, 8
    n = rows * chunks
    plain = SamplingConfig(1)  # temperature 1, no filter: the filter ran above
    draw = jax.jit(
        lambda x, c: choose_tokens(jnp.broadcast_to(x, (rows, x.shape[-1])), KEY, plain, c)
    )
    toks = np.concatenate([np.asarray(draw(filtered, jnp.uint32(c))) for c in range(chunks)])
    freq = np.bincount(toks, minlength=logits.shape[0]) / n
    assert not freq[~keep].any(), "a token outside the top-k / top-p set was drawn"
    expected = probs * n
    common = expected >= 5
    observed = np.append(freq[common] * n, freq[keep & ~common].sum() * n)
    expect = np.append(expected[common], expected[keep & ~common].sum())
    if expect[-1] < 5:  # too little pooled mass for a bin of its own: fold it into the largest
        observed, expect = observed[:-1], expect[:-1]
        top = np.argmax(expect)
        observed[top] += freq[keep & ~common].sum() * n
        expect[top] += expected[keep & ~common].sum()
    stat = float(np.sum((observed - expect) ** 2 / expect))
    p_value = scipy_stats.chi2.sf(stat, len(expect) - 1)
    print(f"{name} {knobs}: kept {keep.sum()}, bins {len(expect)}, chi2 p = {p_value:.3g}")
    assert len(expect) > 3 and p_value > 1e-6, (stat, len(expect))
