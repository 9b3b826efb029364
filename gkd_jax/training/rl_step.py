"""The policy-gradient train step: config.rl's reward + GKD objective and the sampled-token
reverse KL (the math is policy_gradient.py's), one jitted function like step.make_train_step.

The trainer runs it instead of step.make_train_step when `policy_gradient.policy_gradient(config)`
(rl.alpha < 1 or gkd.divergence = "sampled_rkl"); with rl.alpha = 1 and any other divergence
the GKD step runs unchanged. Completions are always the current student's samples (config
checks: gkd.lmbda = 1, plain temperature-1 sampling), drawn in the loop by step.gkd_completions.

A batch holds step.py's four arrays and
  "rewards"      [B] float32, rl.alpha < 1 only: config.rl.reward of each decoded completion,
                 computed by the trainer outside jit between sampling and this step
                 (reward_scoring.RewardScorer); rows i*k .. i*k + k-1 are one prompt's
                 k = rl.num_samples samples;
  "sample_logp"  [B, N] float32, optional: each token's log-probability under the policy that
                 sampled it, for PPO clipping of stale samples (policy_gradient.py). Absent (the
                 trainer's
                 case): these parameters sampled it, the ratio is 1 and rl.clip_ratio is moot.
With rl.kl_to_start the step takes a fourth argument, the student's starting parameters (kept
frozen by the trainer), and reports KL(p_S || p_S at the start) on the same tokens.

Every term is pre-divided by a count over the whole batch (rows, or gkd.reduction's count), so
micro-batches (grad_accum) and devices add up to exactly one big batch's loss and gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gkd_jax.models import lora
from gkd_jax.models.lm import LMFunctions, shared_vocab_logits
from gkd_jax.objectives import losses, policy_gradient
from gkd_jax.parallel import sharding
from gkd_jax.training.step import Objective, score_args, update


def make_rl_train_step(
    config,
    student: LMFunctions,
    teacher: LMFunctions,
    tx,
    *,
    mesh: Mesh | None = None,
    state_shardings=None,
    teacher_shardings=None,
):
    """(state, teacher_params, batch[, start_params]) -> (state, metrics), as
    step.make_train_step, with metrics besides its own:

      reward, reward_positive   mean reward, fraction of samples with reward > 0 (rl.alpha < 1)
      divergence                the GKD divergence of the samples (gkd.divergence, gkd.reduction;
                                "sampled_rkl": the mean of k_t = log p_S(y_t) - log p_T(y_t))
      sample_length             mean completion tokens per sample
      clipped_tokens            tokens whose PPO ratio was clipped (0 with fresh samples)
      kl_to_start               KL(p_S || p_S at the start), gkd.reduction (with rl.kl_to_start)

    "loss" is the objective's value, (1 - alpha) * (-reward) + alpha * divergence."""
    with_start = policy_gradient.kl_to_start(config)
    objective = Objective(config, student, teacher, mesh=mesh)
    loss_fn = functools.partial(micro_loss, config, objective)

    def step(state, teacher_params, batch, start_params=None):
        return rl_step(config, objective, tx, loss_fn, state, teacher_params, batch, start_params)

    if not with_start:  # three arguments, as step.make_train_step's

        def step3(state, teacher_params, batch):
            return step(state, teacher_params, batch)

        fn = step3
    else:
        fn = step
    if mesh is None:
        return jax.jit(fn, donate_argnums=(0,))
    whole = sharding.replicated(mesh)
    in_shardings = (state_shardings, teacher_shardings or whole, sharding.batch_sharding(mesh))
    if with_start:
        in_shardings += (state_shardings["params"],)
    return jax.jit(
        fn, in_shardings=in_shardings, out_shardings=(state_shardings, whole), donate_argnums=(0,)
    )


def rl_step(config, objective: Objective, tx, loss_fn, state, teacher_params, batch, start_params):
    """One update on a batch of samples: their advantages, the gradient of the trainable
    parameters (lora.split_trainable) summed over config.grad_accum micro-batches (`loss_fn`:
    micro_loss), the update."""
    alpha = float(config.rl.alpha)
    mask = batch["completion_mask"]  # [B, N]
    counts = batch_counts(mask, config.gkd.reduction)
    batch = dict(batch)
    metrics = {}
    if alpha < 1.0:
        metrics = add_advantages(batch, config.rl)
    trainable, frozen = lora.split_trainable(state["params"])
    grad_fn = jax.value_and_grad(lora.on_trainable(loss_fn, frozen), has_aux=True)
    grads, sums = accumulate(
        config, grad_fn, trainable, teacher_params, start_params, batch, counts
    )
    loss = alpha * sums["divergence"]
    if alpha < 1.0:
        loss = loss - (1.0 - alpha) * metrics["reward"]
    new_state, base = update(tx, state, grads, loss, batch, objective.vocab)
    metrics |= sums
    metrics["sample_length"] = jnp.sum(mask) / counts["rows"]
    return new_state, base | metrics


def batch_counts(mask, reduction: str) -> dict:
    """The whole batch's counts each term is divided by, so that micro-batches and devices add
    up to one big batch: "rows" (samples) and "div" (gkd.reduction's count) of mask [B, N]."""
    rows = jnp.asarray(mask.shape[0], jnp.float32)
    _, div_count = losses.masked_sum_count(jnp.zeros(mask.shape), mask, reduction)
    return {"rows": rows, "div": div_count}


def add_advantages(batch: dict, r) -> dict:
    """Puts each sample's advantage (its reward against config.rl.baseline over its prompt's
    rl.num_samples samples) into `batch` as "advantages" [B]; returns the reward metrics."""
    rewards = batch["rewards"].astype(jnp.float32)  # [B]
    batch["advantages"] = policy_gradient.advantages(
        rewards, r.num_samples, r.baseline, r.normalize_advantages
    )
    return {
        "reward": jnp.mean(rewards),
        "reward_positive": jnp.mean((rewards > 0).astype(jnp.float32)),
    }


def accumulate(config, grad_fn, params, teacher_params, start_params, batch, counts):
    """(gradient, metric sums) of the whole batch, added up over config.grad_accum
    micro-batches: micro-batch a holds rows a, a + accum, ...."""
    accum = config.grad_accum
    # Row r of micro-batch a is row r * accum + a: rows stay on the device that holds them.
    split = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), batch)

    def micro(a, carry):
        grads, sums = carry
        mb = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, a, 1, False), split)
        (_, s), gr = grad_fn(params, teacher_params, start_params, mb, counts)
        return jax.tree.map(jnp.add, grads, gr), jax.tree.map(jnp.add, sums, s)

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums0 = {"divergence": 0.0, "clipped_tokens": 0.0}
    if policy_gradient.kl_to_start(config):
        sums0["kl_to_start"] = 0.0
    sums0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), sums0)
    return jax.lax.fori_loop(0, accum, micro, (zeros, sums0))


def micro_loss(config, objective: Objective, params, teacher_params, start_params, mb, counts):
    """This micro-batch's share of the loss, and of the metrics' sums: the policy gradient of
    the per-token advantages (the reward's, and sampled_rkl's) plus alpha times a GKD
    divergence's loss."""
    alpha, vocab = float(config.rl.alpha), objective.vocab
    args, mask = score_args(mb), mb["completion_mask"].astype(bool)  # mask [b, N]
    s_logits = objective.student.score(params, *args)  # [b, N, V]
    t_logits = jax.lax.stop_gradient(objective.teacher.score(teacher_params, *args))
    logp = policy_gradient.token_log_probs(
        shared_vocab_logits(s_logits, vocab), mb["completion"]
    )  # [b, N]
    token_adv = jnp.zeros_like(logp)  # [b, N]
    if alpha < 1.0:
        token_adv += (1.0 - alpha) / counts["rows"] * mb["advantages"][:, None]
    sums = {}
    div_loss = 0.0
    if config.gkd.divergence in policy_gradient.SAMPLED_DIVERGENCES:
        rkl_adv, sums["divergence"] = sampled_rkl_terms(
            config, objective, t_logits, logp, mb["completion"], mask, counts
        )
        token_adv += rkl_adv
    else:  # exactly the GKD loss on these samples
        div = gkd_divergence(config, objective, s_logits, t_logits, mask, counts)
        if alpha > 0.0:
            div_loss = alpha * div
        sums["divergence"] = jax.lax.stop_gradient(div)
    pg, sums["clipped_tokens"] = policy_gradient.policy_gradient_loss(
        logp, token_adv, mask, mb.get("sample_logp"), config.rl.clip_ratio
    )
    if policy_gradient.kl_to_start(config):
        sums["kl_to_start"] = start_kl(
            config, objective, start_params, args, s_logits, mask, counts
        )
    return pg + div_loss, sums


def sampled_rkl_terms(config, objective: Objective, t_logits, logp, completion, mask, counts):
    """(alpha-weighted per-token advantages [b, N], the divergence's sum) of the sampled
    reverse KL k_t = log p_S(y_t) - log p_T(y_t): it enters the loss only as rewards of -k,
    advantages the policy-gradient term holds constant."""
    g, alpha = config.gkd, float(config.rl.alpha)
    t_shared = shared_vocab_logits(t_logits, objective.vocab) / g.teacher_temperature
    k = policy_gradient.sampled_rkl(
        logp, policy_gradient.token_log_probs(t_shared, completion)
    )  # [b, N]
    w = policy_gradient.reduction_weights(mask, g.reduction, counts["div"])
    token_adv = alpha * w * policy_gradient.sampled_rkl_advantages(k, mask, config.rl.gamma)
    return token_adv, jnp.sum(jnp.where(mask, w * k, 0.0))


def gkd_divergence(config, objective: Objective, s_logits, t_logits, mask, counts):
    """The GKD loss's divergence (gkd.divergence, gkd.reduction) of the student's logits
    [b, N, V] from the teacher's on these samples, over the whole batch's count."""
    per_token = objective.divergence(s_logits, t_logits)  # [b, N]
    total, _ = losses.masked_sum_count(per_token, mask, config.gkd.reduction)
    return total / jnp.maximum(counts["div"], 1.0)


def start_kl(config, objective: Objective, start_params, args, s_logits, mask, counts):
    """KL(p_S || p_S at the start) on these tokens (gkd.reduction, over the whole batch's
    count): reported, not differentiated."""
    vocab = objective.vocab
    start = shared_vocab_logits(objective.student.score(start_params, *args), vocab)
    kl = losses.generalized_jsd(
        jax.lax.stop_gradient(shared_vocab_logits(s_logits, vocab)), start, beta=1.0
    )  # [b, N]
    total, _ = losses.masked_sum_count(kl, mask, config.gkd.reduction)
    return total / jnp.maximum(counts["div"], 1.0)
