"""The memory fields (config.remat, config.param_dtype, config.teacher_param_dtype): the same
step where they should be, and the dtypes they promise (their start-up checks:
test_config_checks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gkd_jax.config.defaults import base_config
from gkd_jax.models import build_decoder, functional_lm
from gkd_jax.models.hf import build_model
from gkd_jax.models.remat import REMAT_POLICIES, set_remat
from gkd_jax.models.sources import model_config
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import sharding
from gkd_jax.training.optim import make_optimizer
from gkd_jax.training.step import make_train_step


def _batch(rng, b, p, n, vocab):
    prompt = rng.integers(3, vocab, (b, p)).astype(np.int32)
    prompt_mask = np.ones((b, p), bool)
    prompt_mask[0, :2] = False  # left padding in one row
    completion = rng.integers(3, vocab, (b, n)).astype(np.int32)
    completion_mask = np.ones((b, n), bool)
    completion_mask[1, n - 2 :] = False
    return dict(
        prompt=prompt, prompt_mask=prompt_mask, completion=completion,
        completion_mask=completion_mask,
    )  # fmt: skip


def _loss_and_grads(model, batch):
    params, fns = functional_lm(model)
    args = (batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"])

    def loss(p):
        logits = fns.score(p, *args)  # [B, N, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, args[2][..., None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("family", ["decoder", "t5"])
def test_remat_same_loss_and_gradients(family):
    """Rematerialization changes what is stored, not what is computed: loss and gradients
    equal the plain model's to 1e-6, for both families and every policy."""
    if family == "decoder":
        cfg = model_config(base_config().model)
    else:
        cfg = T5Config(
            vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, gated=True,
            activation="gelu_tanh", tie_embeddings=False,
        )  # fmt: skip
    batch = _batch(np.random.default_rng(0), 4, 6, 5, 99)
    base_loss, base_grads = _loss_and_grads(build_model(cfg, seed=1), batch)
    for remat in REMAT_POLICIES[1:]:
        loss, grads = _loss_and_grads(set_remat(build_model(cfg, seed=1), remat), batch)
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6, atol=1e-6)
        for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
            np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_remat_train_step_on_the_mesh():
    """The whole GKD step on the 8-device mesh: remat "full" gives the plain step's loss,
    gradient norm and updated parameters."""
    config = base_config()
    config.batch_size, config.max_new_tokens = 8, 5
    mesh = sharding.make_mesh(1, 4, 2)
    cfg = model_config(config.model)
    batch = jax.device_put(
        _batch(np.random.default_rng(1), 8, 6, 5, 99), sharding.batch_sharding(mesh)
    )
    teacher = sharding.shard_model(lambda: build_decoder(cfg, seed=2), mesh)
    t_params, t_fns = functional_lm(teacher)
    results = []
    for remat in ("none", "full"):
        config.remat = remat
        student = sharding.shard_model(lambda: build_decoder(cfg, seed=3), mesh)
        set_remat(student, remat)
        params, s_fns = functional_lm(student)
        tx = make_optimizer(config)
        state, shardings = sharding.init_train_state(params, tx, mesh)
        step = make_train_step(
            config, s_fns, t_fns, tx, mesh=mesh, state_shardings=shardings,
            teacher_shardings=sharding.tree_shardings(t_params, mesh),
        )  # fmt: skip
        state, m = step(state, t_params, batch)
        results.append((jax.device_get(m), jax.device_get(state["params"])))
    (m0, p0), (m1, p1) = results
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_param_dtypes_and_optimizer_state():
    """bfloat16 master weights give bfloat16 AdamW moments (the optimizer state follows the
    parameters); the compute dtype is apart."""
    config = base_config()
    cfg = model_config(config.model)
    model = nnx.eval_shape(lambda: build_decoder(cfg, dtype=jnp.float32, param_dtype=jnp.bfloat16))
    params, _ = functional_lm(model)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    opt = jax.eval_shape(make_optimizer(config).init, params)
    moments = {x.dtype for x in jax.tree.leaves(opt) if x.ndim}
    assert moments == {jnp.dtype(jnp.bfloat16)}


def test_trainer_loads_in_the_configured_dtypes(tmp_path):
    """The trainer's models (here arith's shipped checkpoints) come in the configured parameter
    dtypes, the student with its layers rematerialized."""
    import os

    from gkd_jax.config.loading import load_config_file
    from gkd_jax.training import trainer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config_file(os.path.join(root, "configs", "arith.py"))
    config.param_dtype, config.teacher_param_dtype, config.remat = "bfloat16", "bfloat16", "dots"
    student, teacher = trainer.load_models(config, str(tmp_path), sharding.make_mesh(-1, 1, 1))
    for model in (student, teacher):
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    assert student.remat == "dots"


def test_memory_fields_resume_bit_exact(tmp_path):
    """A student with bfloat16 master weights (so bfloat16 Adam moments), rematerialized
    layers and a bfloat16 teacher: its train-state checkpoint restores in those dtypes, and
    two steps after restoring step 2 end bit for bit where four uninterrupted steps do."""
    import optax
    from tiny_step_pair import STUDENT, TEACHER, random_batch

    from gkd_jax.training import checkpoint

    config = base_config()
    config.batch_size, config.remat = 16, "full"
    tx = optax.adam(1e-2)
    batch = random_batch(rewards=False)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    t_params, t_fns = functional_lm(build_decoder(TEACHER, seed=2, param_dtype=jnp.bfloat16))

    def fresh():
        student = set_remat(build_decoder(STUDENT, seed=1, param_dtype=jnp.bfloat16), "full")
        params, fns = functional_lm(student)
        return sharding.init_train_state(params, tx, mesh)[0], fns

    state, fns = fresh()
    step = make_train_step(config, fns, t_fns, tx)

    def run(state, n):
        for _ in range(n):
            state, _ = step(state, t_params, batch)
        return state

    straight = jax.device_get(run(state, 4)["params"])
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=1) as ckpts:
        ckpts.save(2, run(fresh()[0], 2), {})
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=1) as ckpts:
        restored, _ = ckpts.restore_latest(fresh()[0], max_step=4)
    assert int(restored["step"]) == 2
    dtypes = {x.dtype for x in jax.tree.leaves(restored) if x.ndim}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}  # parameters and both Adam moments
    resumed = jax.device_get(run(restored, 2)["params"])
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
