"""The policy-gradient train step: config.rl's reward + GKD objective and the sampled-token
reverse KL (the math is rl.py's), one jitted function like step.make_train_step.

The trainer runs it instead of step.make_train_step when `rl.policy_gradient(config)`
(rl.alpha < 1 or gkd.divergence = "sampled_rkl"); with rl.alpha = 1 and any other divergence
the GKD step runs unchanged. Completions are always the current student's samples (config
checks: gkd.lmbda = 1, plain temperature-1 sampling), drawn in the loop by step.gkd_completions.

A batch holds step.py's four arrays and
  "rewards"      [B] float32, rl.alpha < 1 only: config.rl.reward of each decoded completion,
                 computed by the trainer outside jit between sampling and this step
                 (reward_scoring.RewardScorer); rows i*k .. i*k + k-1 are one prompt's
                 k = rl.num_samples samples;
  "sample_logp"  [B, N] float32, optional: each token's log-probability under the policy that
                 sampled it, for PPO clipping of stale samples (rl.py). Absent (the trainer's
                 case): these parameters sampled it, the ratio is 1 and rl.clip_ratio is moot.
With rl.kl_to_start the step takes a fourth argument, the student's starting parameters (kept
frozen by the trainer), and reports KL(p_S || p_S at the start) on the same tokens.

Every term is pre-divided by a count over the whole batch (rows, or gkd.reduction's count), so
micro-batches (grad_accum) and devices add up to exactly one big batch's loss and gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gkd_jax import losses, rl, sharding
from gkd_jax.models.lm import LMFunctions, shared_vocab_logits
from gkd_jax.step import Objective, score_args, update


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
    accum, r, g = config.grad_accum, config.rl, config.gkd
    alpha = float(r.alpha)
    sampled = g.divergence in rl.SAMPLED_DIVERGENCES
    with_start = rl.kl_to_start(config)
    objective = Objective(config, student, teacher, mesh=mesh)
    vocab = objective.vocab

    def micro_loss(params, teacher_params, start_params, mb, counts):
        """This micro-batch's share of the loss, and of the metrics' sums."""
        args, mask = score_args(mb), mb["completion_mask"].astype(bool)
        s_logits = objective.student.score(params, *args)  # [b, N, V]
        t_logits = jax.lax.stop_gradient(objective.teacher.score(teacher_params, *args))
        logp = rl.token_log_probs(shared_vocab_logits(s_logits, vocab), mb["completion"])
        token_adv = jnp.zeros_like(logp)  # [b, N]
        if alpha < 1.0:
            token_adv += (1.0 - alpha) / counts["rows"] * mb["advantages"][:, None]
        sums = {}
        div_loss = 0.0
        if sampled:
            t_shared = shared_vocab_logits(t_logits, vocab) / g.teacher_temperature
            k = rl.sampled_rkl(logp, rl.token_log_probs(t_shared, mb["completion"]))  # [b, N]
            w = rl.reduction_weights(mask, g.reduction, counts["div"])
            token_adv += alpha * w * rl.sampled_rkl_advantages(k, mask, r.gamma)
            sums["divergence"] = jnp.sum(jnp.where(mask, w * k, 0.0))
        else:  # exactly the GKD loss on these samples
            per_token = objective.divergence(s_logits, t_logits)  # [b, N]
            total, _ = losses.masked_sum_count(per_token, mask, g.reduction)
            div = total / jnp.maximum(counts["div"], 1.0)
            if alpha > 0.0:
                div_loss = alpha * div
            sums["divergence"] = jax.lax.stop_gradient(div)
        pg, sums["clipped_tokens"] = rl.policy_gradient_loss(
            logp, token_adv, mask, mb.get("sample_logp"), r.clip_ratio
        )
        if with_start:
            start = shared_vocab_logits(objective.student.score(start_params, *args), vocab)
            kl = losses.generalized_jsd(
                jax.lax.stop_gradient(shared_vocab_logits(s_logits, vocab)), start, beta=1.0
            )
            total, _ = losses.masked_sum_count(kl, mask, g.reduction)
            sums["kl_to_start"] = total / jnp.maximum(counts["div"], 1.0)
        return pg + div_loss, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, teacher_params, batch, start_params=None):
        mask = batch["completion_mask"]
        rows = jnp.asarray(mask.shape[0], jnp.float32)
        _, div_count = losses.masked_sum_count(jnp.zeros(mask.shape), mask, g.reduction)
        counts = {"rows": rows, "div": div_count}
        batch = dict(batch)
        metrics = {}
        if alpha < 1.0:
            rewards = batch["rewards"].astype(jnp.float32)  # [B]
            batch["advantages"] = rl.advantages(
                rewards, r.num_samples, r.baseline, r.normalize_advantages
            )
            metrics["reward"] = jnp.mean(rewards)
            metrics["reward_positive"] = jnp.mean((rewards > 0).astype(jnp.float32))
        # Row r of micro-batch a is row r * accum + a: rows stay on the device that holds them.
        split = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), batch)

        def micro(a, carry):
            grads, sums = carry
            mb = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, a, 1, False), split)
            (_, s), gr = grad_fn(state["params"], teacher_params, start_params, mb, counts)
            return jax.tree.map(jnp.add, grads, gr), jax.tree.map(jnp.add, sums, s)

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        sums0 = {"divergence": 0.0, "clipped_tokens": 0.0}
        if with_start:
            sums0["kl_to_start"] = 0.0
        sums0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), sums0)
        grads, sums = jax.lax.fori_loop(0, accum, micro, (zeros, sums0))
        loss = alpha * sums["divergence"]
        if alpha < 1.0:
            loss = loss - (1.0 - alpha) * metrics["reward"]
        new_state, base = update(tx, state, grads, loss, batch, vocab)
        metrics |= sums
        metrics["sample_length"] = jnp.sum(mask) / rows
        return new_state, base | metrics

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
