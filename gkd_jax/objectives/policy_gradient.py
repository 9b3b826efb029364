"""Policy-gradient pieces of the combined objective (config.rl) and of the sampled-token reverse
KL (gkd.divergence = "sampled_rkl"): pure functions over arrays, used by rl_step.py.

The objective (GKD paper, Section 5), on completions y ~ p_S(. | x) sampled from the current
student, with no gradient through the sampling:

    L = (1 - alpha) * L_reward + alpha * L_div

    L_reward = -(1 / B) sum_i A_i sum_t log p_S(y_it)             (REINFORCE, score function)
    L_div    = the GKD loss on the same samples (config.gkd), or for "sampled_rkl" the policy
               gradient of the per-token estimate k_t = log p_S(y_t) - log p_T(y_t):
               -sum_it w_it Ahat_it log p_S(y_it),  Ahat_it = -sum_{s >= t} gamma^(s-t) k_is

with A_i = r_i - baseline_i (`advantages`), w_it the reduction's weight of token t of row i
(gkd.reduction: 1 / (tokens of row i * rows) for "sequence", 1 / tokens for "token"), and the
advantages held constant (stop_gradient). Only the score-function terms see the rewards;
E[grad L_reward] = -grad E[r] exactly for baselines that do not depend on y_i ("loo", "none").
With gamma = 1 and one token, E[grad of the sampled_rkl term] = grad KL(p_S || p_T).

The reward term and the sampled_rkl term share one surrogate (`policy_gradient_loss`) with the
per-token advantage the weighted sum of both: the sampled_rkl advantage is added to the reward
advantage.

Stale samples and clipping. `policy_gradient_loss` takes the log-probabilities the tokens had
when they were sampled (`old_logp`, the behaviour policy) and uses the PPO surrogate
min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(log p_now - old_logp). A sample is stale
when the parameters that drew it are not the ones being updated (several updates per batch of
samples, an asynchronous sampler). In gkd_jax's step every sample is drawn from the very
parameters being differentiated, so old_logp = stop_gradient(log p_now): rho = 1, the clip is
never active, and the gradient is exactly REINFORCE's; the clip matters only where a caller
passes the log-probabilities of an older policy (rl_step.py's `batch["sample_logp"]`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BASELINES = ("loo", "batch", "none")
KL_TO_START = ("auto", "on", "off")
SAMPLED_DIVERGENCES = ("sampled_rkl",)  # gkd.divergence values trained by policy gradient


def policy_gradient(config) -> bool:
    """Whether a run trains by policy gradient (rl_step.py): a reward term (rl.alpha < 1) or the
    sampled-token reverse KL. False: today's GKD step (step.py), untouched."""
    if config.objective != "gkd":
        return False
    return float(config.rl.alpha) < 1.0 or config.gkd.divergence in SAMPLED_DIVERGENCES


def kl_to_start(config) -> bool:
    """Whether the step reports KL(p_S || p_S at the start) (one more student forward)."""
    setting = config.rl.kl_to_start
    return setting == "on" or (setting == "auto" and policy_gradient(config))


def advantages(
    rewards: jax.Array, num_samples: int, baseline: str, normalize: bool, eps: float = 1e-6
) -> jax.Array:
    """Per-sequence advantages [B] from rewards [B]; rows i*k .. i*k + k-1 are prompt i's k =
    `num_samples` samples.

      "loo":   r_i - mean of the other k - 1 rewards of the same prompt (unbiased: the baseline
               does not depend on y_i; needs k >= 2);
      "batch": r_i - mean over the batch (the mean includes r_i itself, which scales the expected
               gradient by 1 - 1/B);
      "none":  r_i.
    `normalize` divides by the batch's standard deviation of the advantages (+ eps): a common
    variance control that rescales the gradient by a batch statistic (not unbiased)."""
    r = rewards.astype(jnp.float32)  # [B]
    if baseline == "loo":
        if num_samples < 2:
            raise ValueError("the leave-one-out baseline needs num_samples >= 2")
        g = r.reshape(-1, num_samples)  # [B / k, k]
        others = (jnp.sum(g, axis=1, keepdims=True) - g) / (num_samples - 1)
        a = (g - others).reshape(r.shape)
    elif baseline == "batch":
        a = r - jnp.mean(r)
    elif baseline == "none":
        a = r
    else:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if normalize:
        a = a / (jnp.std(a) + eps)
    return a


def reward_to_go(values: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """sum_{s >= t} gamma^(s - t) values_s over the masked positions of each row [B, T] -> [B, T]
    (0 at masked-out positions). gamma = 0: the values themselves."""
    v = jnp.where(mask, values.astype(jnp.float32), 0.0)  # [B, T]
    if gamma == 0.0:
        return v

    def back(carry, x):  # carry, x: [B]
        carry = x + gamma * carry
        return carry, carry

    _, out = jax.lax.scan(back, jnp.zeros_like(v[:, 0]), v.T, reverse=True)  # [T, B]
    return jnp.where(mask, out.T, 0.0)


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[tokens]: [B, T, V], [B, T] -> [B, T] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def sampled_rkl(logp_s: jax.Array, logp_t: jax.Array) -> jax.Array:
    """The per-token estimate k_t = log p_S(y_t) - log p_T(y_t) of KL(p_S || p_T) at the student's
    own token y_t (E_{y_t ~ p_S}[k_t] = KL), held constant: [B, T]."""
    return jax.lax.stop_gradient(logp_s - logp_t)


def sampled_rkl_advantages(k: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """The per-token advantages of the sampled reverse KL, -sum_{s >= t} gamma^(s-t) k_s [B, T]."""
    return -reward_to_go(k, mask, gamma)


def policy_gradient_loss(
    logp: jax.Array,
    token_advantages: jax.Array,
    mask: jax.Array,
    old_logp: jax.Array | None = None,
    clip: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(-sum over masked tokens of the surrogate, number of clipped tokens), from the student's
    log-probabilities of its sampled tokens `logp` [B, T] (differentiable) and per-token
    advantages [B, T] (held constant; any weights folded in).

    The surrogate is rho * A, rho = exp(logp - old_logp), or with `clip` > 0 PPO's
    min(rho A, clip(rho, 1 - clip, 1 + clip) A). `old_logp` None: fresh samples, old_logp =
    stop_gradient(logp), so rho = 1 and the gradient is exactly -sum A grad log p (REINFORCE)."""
    old = jax.lax.stop_gradient(logp) if old_logp is None else old_logp
    a = jax.lax.stop_gradient(token_advantages.astype(jnp.float32))
    ratio = jnp.exp(logp - old)  # [B, T]
    surrogate = ratio * a
    clipped = jnp.zeros((), jnp.float32)
    if clip > 0.0:
        bounded = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * a
        clipped = jnp.sum(jnp.where(mask, bounded < surrogate, False).astype(jnp.float32))
        surrogate = jnp.minimum(surrogate, bounded)
    return -jnp.sum(jnp.where(mask, surrogate, 0.0)), clipped


def reduction_weights(mask: jax.Array, reduction: str, count: jax.Array) -> jax.Array:
    """Each token's weight in a masked mean under `reduction` (losses.masked_sum_count) whose
    count over the whole batch is `count`: [B, T] float32, so weights of micro-batches add up."""
    m = mask.astype(jnp.float32)
    if reduction == "token":
        return m / jnp.maximum(count, 1.0)
    row = jnp.sum(m, axis=-1, keepdims=True)  # [B, 1]
    return m / jnp.maximum(row, 1.0) / jnp.maximum(count, 1.0)
