"""The train step on sharded meshes (data x fsdp x tensor) with each loss form equals the
single-device step with the full loss; parameters and optimizer state really are sharded."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from gkd_jax.config.defaults import base_config
from gkd_jax.models import DecoderConfig, functional_lm
from gkd_jax.models.hf import build_model
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 32  # divides over tensor=8: the vocabulary-parallel path runs
STUDENT = DecoderConfig(V, 16, 1, 4, 2, 32)
TEACHER = DecoderConfig(V, 32, 2, 4, 2, 64)
LR = 0.5
MESHES = {"2x2x2": dict(data=2, fsdp=2, tensor=2), "fsdp8": dict(data=1, fsdp=8),
          "tensor8": dict(data=1, tensor=8)}  # fmt: skip
IMPLS = ["full", "chunked", "fused"]


def gkd_config(loss_impl, **fields):
    c = base_config()
    c.gkd.update(loss_impl=loss_impl, beta=0.3, reduction="sequence", loss_chunk=3)
    c.batch_size, c.steps = 16, 10
    c.update(fields)
    return c


def random_batch(seed=0, b=16, p=6, n=5):
    rng = np.random.default_rng(seed)
    prompt_mask = np.arange(p)[None] >= (p - rng.integers(1, p + 1, b))[:, None]
    completion_mask = np.arange(n)[None] < rng.integers(0, n + 1, b)[:, None]
    return dict(
        prompt=np.where(prompt_mask, rng.integers(3, V, (b, p)), 0).astype(np.int32),
        prompt_mask=prompt_mask,
        completion=np.where(completion_mask, rng.integers(3, V, (b, n)), 0).astype(np.int32),
        completion_mask=completion_mask,
    )


def momentum_sgd():
    # Linear in the gradient (Adam's first step is nearly sign(g)), with a state per parameter.
    return optax.chain(optax.trace(decay=0.9), optax.scale(-LR))


def setup(config, mesh, student=STUDENT, teacher=TEACHER):
    """The trainer's placement (by the rules; built on the host here, as sharding.shard_model
    costs a compilation, and is tested in test_sharding.py)."""
    params, s_fns = functional_lm(build_model(student, seed=1))
    t_params, t_fns = functional_lm(build_model(teacher, seed=2))
    tx = momentum_sgd()
    state, shardings = sharding.init_train_state(params, tx, mesh)
    t_shardings = sharding.tree_shardings(t_params, mesh)
    t_params = jax.device_put(t_params, t_shardings)
    step = trainer.make_train_step(
        config, s_fns, t_fns, tx, mesh=mesh, state_shardings=shardings,
        teacher_shardings=t_shardings,
    )  # fmt: skip
    return step, state, t_params


def one_step(config, mesh, batch, **models):
    step, state, t_params = setup(config, mesh, **models)
    state, metrics = step(state, t_params, jax.device_put(batch, sharding.batch_sharding(mesh)))
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def reference():
    """One device, the full [B, N, V] loss."""
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    state, metrics = one_step(gkd_config("full"), mesh, random_batch())
    return jax.device_get(state["params"]), metrics


def check_equal(state, metrics, reference):
    ref_params, ref_metrics = reference
    for key in ("loss", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
    got = jax.device_get(state["params"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def assert_sharded_by_the_rules(state, mesh):
    specs = sharding.tree_specs(state, mesh)
    specs = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    arrays = jax.tree.leaves(state)
    assert len(specs) == len(arrays)
    split = 0
    for x, spec in zip(arrays, specs, strict=True):
        assert x.sharding.spec == spec
        local = x.sharding.shard_shape(x.shape)
        assert all(s.data.shape == local for s in x.addressable_shards)
        split += local != x.shape
    assert split > len(arrays) // 2  # most arrays (kernels, embeddings, moments) are split


def test_2x2x2_fused_with_grad_accum_equals_one_device_and_compiles_once(reference):
    """data=2, fsdp=2, tensor=2, the vocabulary-parallel fused loss and two micro-batches: the
    same loss, gradient and update as one device with the full loss; then more steps, one
    compilation, the donated state back in its shardings."""
    mesh = sharding.make_mesh(**MESHES["2x2x2"])
    step, state, t_params = setup(gkd_config("fused", grad_accum=2), mesh)
    rows = sharding.batch_sharding(mesh)
    new_state, metrics = step(state, t_params, jax.device_put(random_batch(), rows))
    check_equal(new_state, jax.device_get(metrics), reference)
    kernel = new_state["params"]["layers"][0]["mlp"]["up_proj"]["kernel"][...]  # [16, 32]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (8, 16)
    for seed in (1, 2):
        new_state, _ = step(new_state, t_params, jax.device_put(random_batch(seed), rows))
    assert step._cache_size() == 1
    assert_sharded_by_the_rules(new_state, mesh)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", list(MESHES))
def test_every_mesh_and_loss_form_equals_one_device(layout, impl, reference):
    mesh = sharding.make_mesh(**MESHES[layout])
    state, metrics = one_step(gkd_config(impl), mesh, random_batch())
    check_equal(state, metrics, reference)
    assert_sharded_by_the_rules(state, mesh)


def test_indivisible_vocab_falls_back_to_row_parallel_loss():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    assert sharding.loss_mesh(mesh, 32, 16) is mesh
    rows = sharding.loss_mesh(mesh, 99, 16)
    assert dict(rows.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sharding.loss_mesh(mesh, 99, 4) is None


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["full", "fused"])
def test_t5_pair_on_2x2x2_equals_one_device(impl):
    """T5's rules (q/k/v/o, wi_0/wi_1/wo, shared, lm_head) in a sharded step."""
    models = dict(
        student=T5Config(V, 16, 4, 32, 1, 2, gated=True, tie_embeddings=False),
        teacher=T5Config(V, 32, 8, 64, 1, 4, tie_embeddings=True),
    )
    one = sharding.make_mesh(devices=jax.devices()[:1])
    ref_state, ref_metrics = one_step(gkd_config("full"), one, random_batch(), **models)
    mesh = sharding.make_mesh(**MESHES["2x2x2"])
    state, metrics = one_step(gkd_config(impl), mesh, random_batch(), **models)
    check_equal(state, metrics, (jax.device_get(ref_state["params"]), ref_metrics))
    assert_sharded_by_the_rules(state, mesh)


@pytest.mark.parametrize(
    "cfg",
    [
        DecoderConfig(V, 16, 1, 4, 2, 32, tie_embeddings=False, final_softcap=3.0),
        DecoderConfig(V, 16, 1, 4, 2, 32, scale_embeddings=True),
        T5Config(V, 16, 4, 32, 1, 2, tie_embeddings=True),
        T5Config(V, 16, 4, 32, 1, 2, gated=True, activation="gelu_tanh", tie_embeddings=False),
    ],
    ids=["decoder_untied_softcap", "decoder_tied", "t5", "t5_v1_1"],
)
def test_fused_inputs_give_the_scored_logits(cfg):
    """What the fused loss multiplies, softcap(hidden @ unembedding), is what `score` returns."""
    params, fns = functional_lm(build_model(cfg, seed=4))
    b = random_batch(b=4)
    args = (b["prompt"], b["prompt_mask"], b["completion"], b["completion_mask"])

    @jax.jit  # one compilation, not one per operation
    def both(params):
        return fns.hidden(params, *args) @ fns.unembedding(params), fns.score(params, *args)

    logits, scored = both(params)  # [B, N, V] each
    if fns.final_softcap is not None:
        logits = fns.final_softcap * np.tanh(logits / fns.final_softcap)
    np.testing.assert_allclose(logits, scored, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~20 s of CPU: loads and evaluates three models, compiles four programs
def test_train_and_evaluate_on_fsdp4_tensor2_with_the_fused_loss(tmp_path):
    """The whole loop on arith `:smoke`-sized settings (the shipped teacher and student start),
    mesh fsdp=4 x tensor=2: it trains, evaluates, checkpoints and exports."""
    from gkd_jax.config.defaults import shrink_for_smoke
    from gkd_jax.config.loading import load_config_file

    config = shrink_for_smoke(load_config_file(os.path.join(REPO, "configs", "arith.py")))
    config.unlock()
    config.mesh.update(data=1, fsdp=4, tensor=2)
    config.gkd.loss_impl = "fused"
    config.eval.num_examples, config.export.hf = 32, False
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    assert set(summary["scores"]) == {"teacher", "start", "final"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[0] > 0
    assert checkpoint.has_model(str(tmp_path / "model"))
