"""The policy-gradient step (rl_step.py) and its place in the trainer: rl.alpha = 1 is today's GKD
step bit for bit; the step's gradient is the hand-written objective's, micro-batched or sharded
alike; a real arith run logs the reward metrics and resumes exactly."""

import json
import os

import gkd_step_before_rl
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny_step_pair import models, random_batch

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.config.loading import load_config_file
from gkd_jax.objectives import losses, policy_gradient
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint, preemption, step, trainer
from gkd_jax.training.rl_step import make_rl_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_state(params, tx):
    params = jax.tree.map(jnp.array, params)  # a copy: the step donates its state
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


# ---------------------------------------------------------------------------- alpha = 1
@pytest.mark.parametrize(
    "fields",
    [
        {},
        dict(grad_accum=2, gkd=dict(divergence="fkl", reduction="token", loss_impl="full")),
        dict(gkd=dict(loss_impl="chunked", loss_chunk=7)),
    ],
    ids=["default", "accum2_fkl_token", "chunked"],
)
def test_alpha_1_is_the_gkd_step_bit_for_bit(fields):
    """rl.alpha = 1, whatever the other rl fields say, runs the step as it was before
    policy_gradient.py
    existed (tests/gkd_step_before_rl.py): same parameters, optimizer state and metrics, to the
    bit, over two steps."""
    config = base_config()
    config.update(fields)
    config.rl.update(
        alpha=1.0, reward="exact_answer", num_samples=2, baseline="batch",
        normalize_advantages=True, clip_ratio=0.2, gamma=0.5,
    )  # fmt: skip
    validate_config(config)
    assert not policy_gradient.policy_gradient(config) and not policy_gradient.kl_to_start(config)
    # the old step predates loss_impl="auto": give it the form that auto resolves to
    config.gkd.loss_impl = step.resolved_loss_impl(config)
    params, s_fns, t_params, t_fns = models()
    tx = optax.adamw(1e-2)
    runs = []
    for make in (step.make_train_step, gkd_step_before_rl.make_train_step):
        train_step, state, metrics = make(config, s_fns, t_fns, tx), fresh_state(params, tx), []
        for seed in (0, 1):
            batch = random_batch(seed, rewards=False)
            state, m = train_step(state, t_params, batch)
            metrics.append(m)
        runs.append(jax.device_get((state, metrics)))
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_trainer_picks_the_gkd_step_at_alpha_1_and_the_rl_step_otherwise():
    config = base_config()
    assert not policy_gradient.policy_gradient(config)
    config.rl.alpha = 0.5
    assert policy_gradient.policy_gradient(config) and policy_gradient.kl_to_start(config)
    config.rl.alpha, config.gkd.divergence = 1.0, "sampled_rkl"
    assert policy_gradient.policy_gradient(config)
    config.rl.kl_to_start = "off"
    assert not policy_gradient.kl_to_start(config)


# ---------------------------------------------------------------------------- the gradient
def reference_loss(params, t_params, s_fns, t_fns, batch, config):
    """The objective written out from its definition (policy_gradient.py's docstring), float32."""
    alpha, k, g = config.rl.alpha, config.rl.num_samples, config.gkd
    args = (batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"])
    s_logits = s_fns.score(params, *args).astype(jnp.float32)  # [B, N, V]
    t_logits = jax.lax.stop_gradient(t_fns.score(t_params, *args)).astype(jnp.float32)
    m = batch["completion_mask"].astype(jnp.float32)  # [B, N]
    logp = jnp.take_along_axis(
        jax.nn.log_softmax(s_logits), batch["completion"][..., None], axis=-1
    )[..., 0]  # [B, N]
    b, n = m.shape
    r = jnp.asarray(batch["rewards"]).reshape(-1, k)
    adv = (r - (r.sum(1, keepdims=True) - r) / (k - 1)).reshape(-1)  # leave-one-out
    reward_term = -jnp.sum(adv[:, None] * m * logp) / b
    if g.divergence == "sampled_rkl":
        logp_t = jnp.take_along_axis(
            jax.nn.log_softmax(t_logits / g.teacher_temperature),
            batch["completion"][..., None],
            axis=-1,
        )[..., 0]
        kt = jax.lax.stop_gradient(logp - logp_t) * m
        ahat = jnp.stack(
            [-sum(config.rl.gamma ** (s - t) * kt[:, s] for s in range(t, n)) for t in range(n)],
            axis=1,
        )  # [B, N]
        w = m / jnp.sum(m)  # token reduction
        div_term = -jnp.sum(w * ahat * logp)
    else:
        per_token = losses.generalized_jsd(s_logits, t_logits, beta=g.beta)  # [B, N]
        row = jnp.sum(per_token * m, 1) / jnp.sum(m, 1)
        div_term = jnp.mean(row)  # sequence reduction
    return (1 - alpha) * reward_term + alpha * div_term


def rl_config(**rl_fields):
    config = base_config()
    config.gkd.update(beta=0.3, reduction="sequence")
    config.rl.update(alpha=0.5, reward="exact_answer", num_samples=2, kl_to_start="off")
    config.rl.update(rl_fields)
    return config


@pytest.mark.parametrize(
    "case",
    ["jsd", "jsd_accum2", "sampled_rkl_gamma"],
)
def test_step_gradient_is_the_objectives(case):
    config = rl_config()
    if case == "jsd_accum2":
        config.grad_accum = 2
    if case == "sampled_rkl_gamma":
        config.gkd.update(divergence="sampled_rkl", reduction="token", teacher_temperature=0.7)
        config.rl.update(alpha=0.3, gamma=0.5)
    params, s_fns, t_params, t_fns = models()
    batch = random_batch()
    # jitted: one compile, not one per primitive of the eager backward pass
    expected = jax.jit(
        jax.grad(lambda p: reference_loss(p, t_params, s_fns, t_fns, batch, config))
    )(params)
    tx = optax.sgd(1.0)  # new params = params - gradient
    train_step = make_rl_train_step(config, s_fns, t_fns, tx)
    state, m = train_step(fresh_state(params, tx), t_params, batch)
    got = jax.tree.map(lambda a, b: a - b, params, state["params"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert float(m["reward"]) == pytest.approx(float(np.mean(batch["rewards"])))
    assert float(m["reward_positive"]) == float(np.mean(batch["rewards"] > 0))
    assert float(m["sample_length"]) == float(batch["completion_mask"].sum() / 16)
    assert float(m["clipped_tokens"]) == 0.0 and float(m["nonfinite"]) == 0.0


def test_sample_logp_of_these_parameters_changes_nothing_and_stale_ones_are_clipped():
    """batch["sample_logp"]: the sampling policy's log-probabilities. Equal to the current
    student's (what the trainer's fresh samples have), the step is plain REINFORCE; shifted
    (a stale sampler), PPO's clip binds on the tokens whose ratio left [1 - eps, 1 + eps]."""
    config = rl_config(clip_ratio=0.2)
    params, s_fns, t_params, t_fns = models()
    batch = random_batch()
    args = [batch[k] for k in ("prompt", "prompt_mask", "completion", "completion_mask")]
    logp = policy_gradient.token_log_probs(
        s_fns.score(params, *args), batch["completion"]
    )  # [B, N]
    tx = optax.sgd(1.0)
    train_step = make_rl_train_step(config, s_fns, t_fns, tx)
    fresh, m0 = train_step(fresh_state(params, tx), t_params, batch)
    same, m1 = train_step(fresh_state(params, tx), t_params, dict(batch, sample_logp=logp))
    for a, b in zip(jax.tree.leaves(fresh["params"]), jax.tree.leaves(same["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(m0["clipped_tokens"]) == float(m1["clipped_tokens"]) == 0.0
    shift = np.where(np.arange(logp.shape[1]) % 2, 0.5, -0.5)  # ratios e^-0.5, e^0.5
    stale, m2 = train_step(fresh_state(params, tx), t_params, dict(batch, sample_logp=logp + shift))
    assert float(m2["clipped_tokens"]) > 0
    pairs = zip(jax.tree.leaves(fresh["params"]), jax.tree.leaves(stale["params"]), strict=True)
    assert max(float(np.abs(a - b).max()) for a, b in pairs) > 1e-4
    assert train_step._cache_size() == 2  # with and without sample_logp


# ---------------------------------------------------------------------------- sharded
def run_sharded(mesh, config, batches):
    params, s_fns, t_params, t_fns = models()
    tx = optax.chain(optax.trace(decay=0.9), optax.scale(-0.5))
    state, shardings = sharding.init_train_state(jax.tree.map(jnp.array, params), tx, mesh)
    t_shardings = sharding.tree_shardings(t_params, mesh)
    t_params = jax.device_put(t_params, t_shardings)
    start = jax.device_put(params, shardings["params"])
    train_step = make_rl_train_step(
        config, s_fns, t_fns, tx, mesh=mesh, state_shardings=shardings,
        teacher_shardings=t_shardings,
    )  # fmt: skip
    rows, out = sharding.batch_sharding(mesh), []
    for batch in batches:
        state, m = train_step(state, t_params, jax.device_put(batch, rows), start)
        out.append(jax.device_get(m))
    return train_step, jax.device_get(state["params"]), out, state


def test_rl_step_on_the_2x2x2_mesh_equals_one_device_and_compiles_once():
    """data x fsdp x tensor = 2 x 2 x 2, two micro-batches, leave-one-out over groups of 4
    samples, KL to the (sharded, frozen) start: what one device computes, one compilation."""
    config = rl_config(num_samples=4, kl_to_start="on", normalize_advantages=True)
    config.grad_accum = 2
    batches = [random_batch(seed) for seed in range(3)]
    one = sharding.make_mesh(devices=jax.devices()[:1])
    _, ref_params, ref_metrics, _ = run_sharded(one, config, batches)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    train_step, params, metrics, state = run_sharded(mesh, config, batches)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for got, ref in zip(metrics, ref_metrics, strict=True):
        for key in ("loss", "reward", "divergence", "kl_to_start", "sample_length"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-6)
    assert metrics[0]["kl_to_start"] == 0.0 < metrics[2]["kl_to_start"]
    assert train_step._cache_size() == 1
    kernel = state["params"]["layers"][0]["mlp"]["up_proj"]["kernel"][...]
    assert kernel.addressable_shards[0].data.shape != kernel.shape  # really sharded


# ---------------------------------------------------------------------------- real runs
def arith_rl_config(**top):
    """configs/arith.py (the shipped teacher and SFT student) with rl.alpha = 0.5 and the
    exact-answer reward, shrunk to seconds: 16 samples (4 prompts x 4) a step."""
    config = load_config_file(os.path.join(REPO, "configs", "arith.py"))
    config.unlock()
    config.update(steps=4, batch_size=16, log_every=1, compare_lmbdas="")
    config.eval.update(num_examples=16, batch_size=16)
    config.export.hf = False
    config.rl.update(alpha=0.5, reward="exact_answer", num_samples=4)
    config.update(top)
    return config


def metric_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]


def final_params(workdir):
    return jax.tree.leaves(nnx.state(checkpoint.load_model(str(workdir / "model")), nnx.Param))


@pytest.fixture(scope="module")
def straight_rl_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rl_straight")
    trainer.train_and_evaluate(arith_rl_config(), str(workdir))
    return workdir


def test_arith_alpha_half_logs_the_reward_metrics(straight_rl_run):
    rows = [r for r in metric_rows(straight_rl_run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for key in ("reward", "reward_positive", "divergence", "kl_to_start", "sample_length"):
            assert np.isfinite(r[key]), (key, r)
        assert 0 <= r["reward_positive"] <= 1 and 1 <= r["sample_length"] <= 48
        assert r["divergence"] > 0 and r["clipped_tokens"] == 0
    # The SFT start answers ~60% of arith problems: the exact-answer reward is not all zeros.
    assert max(r["reward_positive"] for r in rows) > 0
    assert rows[0]["kl_to_start"] < 1e-6 < rows[-1]["kl_to_start"]


@pytest.mark.slow
def test_arith_rl_run_resumes_bit_for_bit(straight_rl_run, tmp_path):
    with pytest.raises(preemption.Preempted):
        trainer.train_and_evaluate(arith_rl_config(stop_after_steps=2), str(tmp_path))
    trainer.train_and_evaluate(arith_rl_config(), str(tmp_path))  # resumes at step 2
    for a, b in zip(final_params(tmp_path), final_params(straight_rl_run), strict=True):
        np.testing.assert_array_equal(a, b)
    assert metric_rows(tmp_path) == metric_rows(straight_rl_run)


# ---------------------------------------------------------------------------- config checks
RELATIONAL = {
    "reward_missing": (dict(rl=dict(reward="")), "rl.reward", "must name a reward"),
    "loo_one_sample": (
        dict(rl=dict(num_samples=1)),
        "rl.num_samples",
        "rl.baseline='batch'",
    ),
    "indivisible": (dict(batch_size=24, rl=dict(num_samples=16)), "batch_size", "num_samples"),
    "off_policy": (dict(gkd=dict(lmbda=0.5)), "gkd.lmbda", "must be 1"),
    "imitkd": (dict(gkd=dict(lmbda_schedule="imitkd")), "gkd.lmbda", "constant"),
    "temperature": (dict(sampling=dict(temperature=0.7)), "sampling.temperature", "be 1.0"),
    "top_k": (dict(sampling=dict(top_k=5)), "sampling.top_k", "be 0"),
    "top_p": (dict(sampling=dict(top_p=0.9)), "sampling.top_p", "be 1.0"),
    "loss_impl": (dict(gkd=dict(loss_impl="fused")), "gkd.loss_impl", "must be 'full'"),
    "dropout": (dict(dropout_rate=0.1), "dropout_rate", "must be 0"),
    "sft": (dict(objective="sft"), "rl.alpha", "set rl.alpha=1"),
    "srkl_loss_temperature": (
        dict(rl=dict(alpha=1.0), gkd=dict(divergence="sampled_rkl", loss_temperature=2.0)),
        "gkd.loss_temperature",
        "must be 1",
    ),
    "kl_to_start_on_gkd": (
        dict(rl=dict(alpha=1.0, kl_to_start="on")),
        "rl.kl_to_start",
        "'auto'",
    ),
    "comparisons": (dict(compare_lmbdas="0"), "compare_lmbdas", "compare_lmbdas=''"),
    "reward_import_path": (
        dict(rl=dict(reward="no_such_pkg:fn")),
        "rl.reward",
        "PYTHONPATH",
    ),
}


@pytest.mark.parametrize("case", sorted(RELATIONAL))
def test_policy_gradient_config_checks_name_the_field_and_the_fix(case):
    """What the policy-gradient step needs of the rest of the config (alpha 0.5 as the base)."""
    fields, field, fix = RELATIONAL[case]
    config = base_config()
    config.rl.update(alpha=0.5, reward="exact_answer")
    for key, value in fields.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    with pytest.raises(ValueError, match=f"config.{field}=") as err:
        validate_config(config)
    assert fix in str(err.value)


def test_policy_gradient_configs_that_pass():
    config = base_config()
    config.rl.update(alpha=0.0, reward="exact_answer", baseline="none", num_samples=1)
    validate_config(config)
    config = base_config()
    config.gkd.divergence, config.gkd.teacher_temperature = "sampled_rkl", 0.5
    validate_config(config)  # no reward needed at alpha 1
