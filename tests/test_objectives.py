"""The paper's baselines through the real trainer functions: divergence by name (fkl, rkl, tv,
jsd) in the per-token loss, and lmbda schedules (ImitKD) in the choice of completions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.decoding.sampling import SampleOutput
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm
from gkd_jax.objectives import losses
from gkd_jax.training import trainer
from gkd_jax.training.step import Objective, resolved_loss_impl

V = 99
STUDENT = DecoderConfig(V, 16, 1, 2, 1, 32)
TEACHER = DecoderConfig(V, 24, 1, 2, 1, 48)


def micro_batch(b=4, p=5, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        prompt=jnp.asarray(rng.integers(3, V, (b, p)), jnp.int32),
        prompt_mask=jnp.ones((b, p), bool),
        completion=jnp.asarray(rng.integers(3, V, (b, n)), jnp.int32),
        completion_mask=jnp.ones((b, n), bool),
    )


@pytest.mark.parametrize(
    "name,reference",
    [
        ("fkl", lambda s, t: losses.generalized_jsd(s, t, beta=0.0)),
        ("rkl", lambda s, t: losses.generalized_jsd(s, t, beta=1.0)),
        ("jsd", lambda s, t: losses.generalized_jsd(s, t, beta=0.3)),
        ("tv", lambda s, t: losses.total_variation(s, t)),
    ],
)
def test_token_losses_use_the_named_divergence(name, reference):
    config = base_config()
    config.gkd.divergence, config.gkd.beta = name, 0.3
    params, student = functional_lm(build_decoder(STUDENT, seed=1))
    t_params, teacher = functional_lm(build_decoder(TEACHER, seed=2))
    mb = micro_batch()
    # jitted: eager model code compiles one program per primitive, which is the slow part
    got = jax.jit(Objective(config, student, teacher).token_losses)(params, t_params, mb)
    args = (mb["prompt"], mb["prompt_mask"], mb["completion"], mb["completion_mask"])
    want = reference(jax.jit(student.score)(params, *args), jax.jit(teacher.score)(t_params, *args))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "fields,want",
    [
        ({}, "chunked"),
        (dict(gkd=dict(divergence="fkl")), "chunked"),
        (dict(gkd=dict(divergence="rkl")), "chunked"),
        (dict(gkd=dict(divergence="tv")), "full"),  # not a generalized JSD
        (dict(gkd=dict(teacher_top_k=8)), "full"),  # the sparse loss holds no [B, N, V]
        (dict(gkd=dict(divergence="sampled_rkl")), "full"),  # policy gradient
        (dict(rl=dict(alpha=0.5, reward="exact_answer")), "full"),
        (dict(objective="sft"), "full"),
        (dict(gkd=dict(loss_impl="full")), "full"),
        (dict(gkd=dict(loss_impl="fused")), "fused"),
    ],
)
def test_auto_loss_impl_is_chunked_where_a_lean_form_applies(fields, want):
    """gkd.loss_impl="auto" (the default): the chunked loss wherever it computes the same
    objective, the full one elsewhere; every config here validates, so auto never picks a form
    that the checks would refuse. The Objective builds what it resolves to."""
    config = base_config()
    config.update(fields)
    validate_config(config)
    assert resolved_loss_impl(config) == want
    objective = Objective(config, *(functional_lm(build_decoder(c))[1] for c in (STUDENT, TEACHER)))
    assert objective.loss_impl == want and objective.memory_lean == (want != "full")


def fake_samplers(b, n):
    def make(value):
        def sampler(params, prompt, prompt_mask, rng):
            return SampleOutput(jnp.full((b, n), value, jnp.int32), jnp.ones((b, n), bool), 0, 0)

        return sampler

    return {"student": make(1), "teacher": make(2)}


def on_policy_fraction(schedule, steps, lmbda=1.0, window=range(0, 10)):
    config = base_config()
    config.steps, config.gkd.lmbda, config.gkd.lmbda_schedule = steps, lmbda, schedule
    b, n = 8, 2
    prompt = jnp.zeros((b, 3), jnp.int32)
    target = jnp.full((b, n), 7, jnp.int32)
    fracs = []
    for step in window:
        _, _, frac = trainer.gkd_completions(
            config, step, fake_samplers(b, n), None, None, jax.random.key(0), prompt,
            jnp.ones((b, 3), bool), target, jnp.ones((b, n), bool),
        )  # fmt: skip
        fracs.append(frac)
    return float(np.mean(fracs))


def test_linear_schedule_rises_from_supervised_to_on_policy():
    assert on_policy_fraction("linear", 1000, window=range(0, 40)) < 0.1
    assert on_policy_fraction("linear", 1000, window=range(960, 1000)) > 0.85
    assert on_policy_fraction("constant", 1000, window=range(0, 40)) == 1.0


def test_imitkd_schedule_is_half_on_policy():
    frac = on_policy_fraction("imitkd", 1000, lmbda=1.0, window=range(0, 200))
    assert 0.4 < frac < 0.6


@pytest.mark.parametrize(
    "field,value", [("gkd.divergence", "kl"), ("gkd.lmbda_schedule", "cosine")]
)
def test_unknown_names_fail_at_start(field, value):
    from gkd_jax.config.checks import validate_config

    config = base_config()
    group, leaf = field.split(".")
    config[group][leaf] = value
    with pytest.raises(ValueError, match=field):
        validate_config(config)
