"""The policy-gradient estimators of policy_gradient.py against exact values, by Monte Carlo.

Each Monte Carlo test draws M independent batches, takes one estimate per batch, and compares
the mean of the M estimates with the exact value within TOL_SE standard errors (the standard
error of that mean, from the estimates' own spread), per component. The draws are seeded, so a
test passes or fails the same way every run; each also checks that its tolerance is tight enough
to catch the bias it is there to catch (a 1/k-sized one).
"""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax.objectives import losses, policy_gradient
from gkd_jax.training.reward_scoring import RewardScorer, repeat_prompts

TOL_SE = 5.0  # a correct estimator is off by more than 5 SE with probability ~6e-7 per component
K = 6  # arms / vocabulary
THETA = jnp.asarray([0.3, -1.0, 0.8, 0.0, -0.4, 1.1])  # the policy's logits
REWARD = jnp.asarray([1.0, 0.0, 0.5, 2.0, -1.0, 0.2]) + 5.0  # an offset: baselines matter
B, GROUP, M = 32, 4, 4000  # rows per batch (8 prompts x 4 samples), batches


def exact_reward_gradient(theta, reward):
    """grad_theta E_{a ~ softmax(theta)}[r(a)] = p * (r - E r)."""
    p = jax.nn.softmax(theta)
    return p * (reward - jnp.dot(p, reward))


def bandit_estimates(baseline, normalize=False, seed=0):
    """M estimates [M, K] of grad E[r] by policy_gradient.py's REINFORCE surrogate: each batch is B
    draws of
    the categorical policy (B / GROUP 'prompts' x GROUP samples, one token each)."""

    def one(key):
        a = jax.random.categorical(key, THETA, shape=(B,))  # [B]
        adv = policy_gradient.advantages(REWARD[a], GROUP, baseline, normalize)  # [B]
        mask = jnp.ones((B, 1), bool)

        def loss(theta):
            logp = policy_gradient.token_log_probs(
                jnp.broadcast_to(theta, (B, 1, K)), a[:, None]
            )  # [B, 1]
            return policy_gradient.policy_gradient_loss(logp, adv[:, None] / B, mask)[0]

        return -jax.grad(loss)(THETA)  # the surrogate's descent direction is the ascent of E r

    keys = jax.random.split(jax.random.key(seed), M)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)  # [M, K]


def mean_and_se(estimates):
    return estimates.mean(0), estimates.std(0, ddof=1) / np.sqrt(len(estimates))


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_reinforce_is_unbiased_on_a_categorical_bandit(baseline):
    exact = np.asarray(exact_reward_gradient(THETA, REWARD))
    mean, se = mean_and_se(bandit_estimates(baseline))
    np.testing.assert_array_less(np.abs(mean - exact), TOL_SE * se)
    if baseline == "loo":
        # Power: a baseline that included the sample's own reward would scale the gradient by
        # 1 - 1/GROUP = 0.75; the tolerance is far tighter than that.
        assert np.all(TOL_SE * se < 0.1 * np.abs(exact).max())


def test_batch_mean_baseline_scales_the_gradient_by_one_minus_one_over_b():
    """As policy_gradient.advantages documents: the batch mean includes the row's own reward."""
    exact = np.asarray(exact_reward_gradient(THETA, REWARD)) * (1 - 1 / B)
    mean, se = mean_and_se(bandit_estimates("batch"))
    np.testing.assert_array_less(np.abs(mean - exact), TOL_SE * se)


def test_loo_baseline_keeps_the_expectation_and_reduces_the_variance():
    none, loo = bandit_estimates("none"), bandit_estimates("loo", seed=1)
    (m0, se0), (m1, se1) = mean_and_se(none), mean_and_se(loo)
    np.testing.assert_array_less(np.abs(m1 - m0), TOL_SE * np.hypot(se0, se1))
    var_none, var_loo = none.var(0).sum(), loo.var(0).sum()
    assert var_loo < 0.1 * var_none  # rewards ~5 +- 1: the baseline removes the offset's noise


def test_advantages_by_hand():
    r = jnp.asarray([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])
    np.testing.assert_allclose(
        policy_gradient.advantages(r, 3, "loo", False), [-1.5, 0, 1.5, 6, -3, -3]
    )
    np.testing.assert_allclose(policy_gradient.advantages(r, 3, "batch", False), r - 2.0)
    np.testing.assert_allclose(policy_gradient.advantages(r, 3, "none", False), r)
    a = policy_gradient.advantages(r, 3, "none", True)
    np.testing.assert_allclose(a, r / (np.std(np.asarray(r)) + 1e-6), rtol=1e-6)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        policy_gradient.advantages(r, 1, "loo", False)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_reward_to_go_matches_a_loop(gamma):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 7)).astype(np.float32)
    mask = np.arange(7)[None] < np.asarray([7, 3, 0])[:, None]
    expected = np.zeros_like(values)
    for i in range(3):
        acc = 0.0
        for t in reversed(range(7)):
            if mask[i, t]:
                acc = values[i, t] + gamma * acc
                expected[i, t] = acc
    got = policy_gradient.reward_to_go(jnp.asarray(values), jnp.asarray(mask), gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- sampled-token reverse KL
S_LOGITS = jnp.asarray([0.5, -0.2, 1.3, 0.0, -1.5, 0.7])
T_LOGITS = jnp.asarray([1.0, 0.4, -0.3, 0.9, -0.5, 0.1])
N_DRAWS = 200_000


def test_sampled_rkl_expectation_is_the_reverse_kl():
    y = jax.random.categorical(jax.random.key(0), S_LOGITS, shape=(N_DRAWS,))
    logp_s = policy_gradient.token_log_probs(
        jnp.broadcast_to(S_LOGITS, (N_DRAWS, 1, K)), y[:, None]
    )
    logp_t = policy_gradient.token_log_probs(
        jnp.broadcast_to(T_LOGITS, (N_DRAWS, 1, K)), y[:, None]
    )
    k = np.asarray(policy_gradient.sampled_rkl(logp_s, logp_t), np.float64)[:, 0]
    exact = float(losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=1.0))
    mean, se = k.mean(), k.std(ddof=1) / np.sqrt(N_DRAWS)
    assert abs(mean - exact) < TOL_SE * se
    assert TOL_SE * se < 0.05 * exact  # power: the test resolves the KL to a few percent


def test_sampled_rkl_gradient_in_expectation_is_the_reverse_kl_gradient():
    """One step, one token: the surrogate -Ahat * log p_S(y), Ahat = -(log p_S(y) - log p_T(y))
    held constant, has expected gradient grad KL(p_S || p_T) w.r.t. the student's logits."""
    exact = np.asarray(jax.grad(lambda s: losses.generalized_jsd(s, T_LOGITS, beta=1.0))(S_LOGITS))
    mask = jnp.ones((1, 1), bool)

    def one(key):
        y = jax.random.categorical(key, S_LOGITS)[None, None]  # [1, 1]

        def loss(s):
            logp_s = policy_gradient.token_log_probs(s[None, None], y)  # [1, 1]
            logp_t = policy_gradient.token_log_probs(T_LOGITS[None, None], y)
            adv = policy_gradient.sampled_rkl_advantages(
                policy_gradient.sampled_rkl(logp_s, logp_t), mask, 0.0
            )
            return policy_gradient.policy_gradient_loss(logp_s, adv, mask)[0]

        return jax.grad(loss)(S_LOGITS)

    keys = jax.random.split(jax.random.key(1), N_DRAWS)
    est = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)  # [N, K]
    mean, se = mean_and_se(est)
    np.testing.assert_array_less(np.abs(mean - exact), TOL_SE * se)
    assert np.all(TOL_SE * se < 0.1 * np.abs(exact).max())


# ---------------------------------------------------------------- ratio clipping
def test_fresh_samples_give_reinforce_and_stale_ones_are_clipped():
    logits = jnp.asarray([[[0.1, 0.7, -0.3], [1.0, 0.0, 0.5]]])  # [1, 2, 3]
    tokens, mask = jnp.asarray([[1, 2]]), jnp.ones((1, 2), bool)
    adv = jnp.asarray([[2.0, -1.0]])

    def grad_of(old, clip):
        def loss(z):
            logp = policy_gradient.token_log_probs(z, tokens)
            return policy_gradient.policy_gradient_loss(logp, adv, mask, old, clip)[0]

        return jax.grad(loss)(logits)

    reinforce = jax.grad(lambda z: -jnp.sum(adv * policy_gradient.token_log_probs(z, tokens)))(
        logits
    )
    # Fresh (old_logp None = these parameters): rho = 1, the clip never binds.
    np.testing.assert_allclose(grad_of(None, 0.0), reinforce, rtol=1e-6)
    np.testing.assert_allclose(grad_of(None, 0.2), reinforce, rtol=1e-6)
    logp = policy_gradient.token_log_probs(logits, tokens)
    # Stale: token 0's ratio is e^0.5 > 1.2 with A > 0 -> clipped, no gradient; token 1's
    # ratio e^-0.05 is inside [0.8, 1.2] -> gradient rho * A * grad log p.
    old = logp - jnp.asarray([[0.5, -0.05]])
    g = grad_of(old, 0.2)
    np.testing.assert_allclose(g[0, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(g[0, 1], np.exp(-0.05) * reinforce[0, 1], rtol=1e-5)
    assert float(policy_gradient.policy_gradient_loss(logp, adv, mask, old, 0.2)[1]) == 1.0
    # Unclipped, the stale token gets its full importance weight.
    np.testing.assert_allclose(grad_of(old, 0.0)[0, 0], np.exp(0.5) * reinforce[0, 0], rtol=1e-5)


# ---------------------------------------------------------------- the host side
class Letters:
    """A stand-in tokenizer: id i is the letter chr(96 + i); 0 is padding (skipped)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(96 + int(i)) for i in ids if int(i))


def test_reward_scorer_pairs_each_sample_with_its_example(monkeypatch):
    seen = {}

    def reward(prompts, completions, references):
        seen.update(prompts=prompts, completions=completions, references=references)
        return np.asarray([float(c == r) for c, r in zip(completions, references, strict=True)])

    module = types.SimpleNamespace(match=reward)  # a reward given by import path
    monkeypatch.setitem(sys.modules, "rl_test_rewards", module)
    scorer = RewardScorer("rl_test_rewards:match", Letters(), ["p0", "p1", "p2"], ["ab", "c", "d"])
    batch = repeat_prompts({"index": np.asarray([2, 0])}, 2)
    np.testing.assert_array_equal(batch["index"], [2, 2, 0, 0])
    tokens = np.asarray([[4, 1, 0], [4, 0, 0], [1, 2, 9], [1, 2, 0]])
    mask = np.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(scorer(batch["index"], tokens, mask), [0, 1, 1, 1])
    assert seen["prompts"] == ["p2", "p2", "p0", "p0"]
    assert seen["completions"] == ["da", "d", "ab", "ab"]  # masked-out and padding ids dropped
    assert seen["references"] == ["d", "d", "ab", "ab"]
    module.match = lambda p, c, r: np.full(len(c), np.nan)
    scorer = RewardScorer("rl_test_rewards:match", Letters(), ["p"], ["r"])
    with pytest.raises(ValueError, match="non-finite"):
        scorer(np.asarray([0]), tokens[:1], mask[:1])
    module.match = lambda p, c, r: np.zeros(2)
    scorer = RewardScorer("rl_test_rewards:match", Letters(), ["p"], ["r"])
    with pytest.raises(ValueError, match="one float per completion"):
        scorer(np.asarray([0]), tokens[:1], mask[:1])
