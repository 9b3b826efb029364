"""The LoRA student (gkd_jax/models/lora.py): with B = 0 it starts as the plain model; only the
adapters train and hold optimizer state; their gradient is that of an independent merged-weight
model written here, and no full-size weight gradient is ever formed; the merged export gives
the LoRA model's logits; the step on the 8-device mesh equals one device's; a stopped and
resumed run ends with the uninterrupted run's adapters; bad settings fail naming the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_resume import tiny_config, tiny_models  # noqa: F401  (tiny_models: a fixture)
from tiny_step_pair import STUDENT, TEACHER, random_batch

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.models import build_decoder, functional_lm, lora, with_params
from gkd_jax.models.hf import build_model, load_pretrained, save_pretrained
from gkd_jax.models.safetensors_io import SafetensorsReader
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import sharding
from gkd_jax.planning import planner as plan
from gkd_jax.planning import target as plan_target
from gkd_jax.training import checkpoint, preemption, trainer
from gkd_jax.training.step import Objective, make_train_step, score_args

RANK, ALPHA = 4, 8.0
# The tiny student's kernel shapes [in, out]: q/o [16, 16], k/v [16, 8], gate/up [16, 32],
# down [32, 16].
KERNEL_SHAPES = {(16, 16), (16, 8), (16, 32), (32, 16)}


def lora_student(b_scale=0.0):
    """The tiny student (seed 1) with rank-4 adapters on the default targets; b_scale > 0 draws
    a nonzero B, as training would leave it (with B = 0, A's gradient is zero)."""
    model = lora.add_lora(build_decoder(STUDENT, seed=1), rank=RANK, alpha=ALPHA, seed=3)
    if b_scale:
        rng = np.random.default_rng(0)
        for _, m in nnx.iter_modules(model):
            if isinstance(m, lora.LoRALinear):
                m.lora_b[...] = jnp.asarray(b_scale * rng.normal(size=m.lora_b.shape), jnp.float32)
    return model


def step_config():
    c = base_config()
    c.batch_size, c.gkd.beta = 16, 0.3
    return c


def one_device_state(params, tx):
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    return sharding.init_train_state(params, tx, mesh, trainable=lora.trainable_params)[0]


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def pair():
    t_params, t_fns = functional_lm(build_decoder(TEACHER, seed=2))
    return t_params, t_fns, random_batch(rewards=False)


@pytest.fixture(scope="module")
def three_lora_steps(pair):
    """(parameters before, state after, losses): three Adam steps of the LoRA student."""
    t_params, t_fns, batch = pair
    tx = optax.adam(1e-2)
    params, fns = functional_lm(lora_student())
    before = jax.device_get(params)  # the state's arrays are donated to the step
    state = one_device_state(params, tx)
    step = make_train_step(step_config(), fns, t_fns, tx)
    losses = []
    for _ in range(3):
        state, m = step(state, t_params, batch)
        losses.append(float(m["loss"]))
    return before, state, losses


def test_zero_b_gives_the_plain_first_loss(pair, three_lora_steps):
    """(1) B = 0: the LoRA step's first loss is the plain student's loss on the same batch."""
    t_params, t_fns, batch = pair
    params, fns = functional_lm(build_decoder(STUDENT, seed=1))
    total, count = jax.jit(Objective(step_config(), fns, t_fns).sum_count)(params, t_params, batch)
    assert abs(three_lora_steps[2][0] - float(total / count)) <= 1e-6
    assert three_lora_steps[2][2] < three_lora_steps[2][0]  # and the adapters do train


def test_only_the_adapters_train_and_hold_optimizer_state(three_lora_steps):
    """(2) Base weights bit-identical after three steps, every adapter moved, and Adam's
    moments exist for the adapters only (2 x their bytes, vs 2 x the whole model's)."""
    before, state, _ = three_lora_steps
    ad_before, base_before = lora.split_trainable(before)
    ad_after, base_after = lora.split_trainable(state["params"])
    for x, y in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after), strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))
    for x, y in zip(jax.tree.leaves(ad_before), jax.tree.leaves(ad_after), strict=True):
        assert not np.array_equal(x, np.asarray(y))
    moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim]
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(ad_after))
    assert sorted(x.shape for x in moments) == sorted(adapter_shapes * 2)  # mu and nu
    assert len(adapter_shapes) == 2 * 7  # A and B of q, k, v, o, gate, up, down
    print(f"adapters {nbytes(ad_after)} B, base {nbytes(base_after)} B, Adam {nbytes(moments)} B")
    assert nbytes(moments) == 2 * nbytes(ad_after) == 2 * 4 * 1_024  # r (in + out) per layer


def test_remat_with_lora_is_the_plain_lora_step(pair):
    """config.remat on a LoRA student: two steps with each policy give the remat="none" loss
    and adapters (to 1e-6). The adapters' gradient closes over the frozen base, whose
    Variables nnx.remat once refused to merge from another trace level (TraceContextError)."""
    from gkd_jax.models.remat import REMAT_POLICIES, set_remat

    t_params, t_fns, batch = pair
    tx = optax.adam(1e-2)
    runs = {}
    for remat in REMAT_POLICIES:
        config = step_config()
        config.remat = remat
        params, fns = functional_lm(set_remat(lora_student(b_scale=0.1), remat))
        state = one_device_state(params, tx)
        step = make_train_step(config, fns, t_fns, tx)
        for _ in range(2):
            state, m = step(state, t_params, batch)
        runs[remat] = float(m["loss"]), jax.device_get(lora.trainable_params(state["params"]))
    loss, adapters = runs["none"]
    for remat in REMAT_POLICIES[1:]:
        assert abs(runs[remat][0] - loss) <= 1e-6, (remat, runs[remat][0], loss)
        for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(runs[remat][1]), strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)


def dot_shapes(jaxpr) -> set[tuple[int, ...]]:
    """The output shapes of every dot_general in a jaxpr, nested jaxprs included."""
    shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.add(tuple(eqn.outvars[0].aval.shape))
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes |= dot_shapes(inner)
    return shapes


def merged_reference(base: dict, adapters: dict) -> dict:
    """The plain model's pure-dict parameters with each adapted kernel W + (alpha/r) A B."""
    out = dict(base)
    for k, v in adapters.items():
        if "lora_a" in v:
            delta = (ALPHA / RANK) * v["lora_a"] @ v["lora_b"]
            out[k] = dict(base[k], kernel=base[k]["kernel"] + delta)
        else:
            out[k] = merged_reference(base[k], v)
    return out


def test_adapter_gradient_is_the_merged_weight_models(pair):
    """(3) d/dA, d/dB through LoRALinear equal jax.grad of a model whose kernels are merged
    here, W + (alpha/r) A B; the LoRA gradient forms no [in, out] product, the plain one does."""
    _, _, batch = pair
    params, fns = functional_lm(lora_student(b_scale=0.3))
    adapters, frozen = lora.split_trainable(params)
    plain_params, plain_fns = functional_lm(build_decoder(STUDENT, seed=1))
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(16, 5, 32)), jnp.float32)

    def lora_loss(ad):
        return jnp.sum(fns.score(lora.join(ad, frozen), *score_args(batch)) * weights)

    def reference_loss(ad: dict):
        state = jax.tree.map(lambda x: x, plain_params)
        nnx.replace_by_pure_dict(state, merged_reference(nnx.to_pure_dict(plain_params), ad))
        return jnp.sum(plain_fns.score(state, *score_args(batch)) * weights)

    got = nnx.to_pure_dict(jax.jit(jax.grad(lora_loss))(adapters))
    want = jax.jit(jax.grad(reference_loss))(nnx.to_pure_dict(adapters))
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = np.abs(y).max()
        assert scale > 1e-3  # A's gradient too: B is not zero
        np.testing.assert_allclose(x, y, atol=1e-5 * scale)  # float32 sums of other orders
    assert not dot_shapes(jax.make_jaxpr(jax.grad(lora_loss))(adapters).jaxpr) & KERNEL_SHAPES
    # The check can fail: the merged form multiplies A B out to [in, out] and differentiates it.
    merged_grad = jax.make_jaxpr(jax.grad(reference_loss))(nnx.to_pure_dict(adapters))
    assert dot_shapes(merged_grad.jaxpr) >= KERNEL_SHAPES


def test_merged_export_gives_the_lora_logits(tmp_path, pair):
    """(4) WORKDIR/model and the Hugging Face export hold W + (alpha/r) A B: a plain model
    whose logits are the LoRA model's."""
    _, _, batch = pair
    model = lora_student(b_scale=0.3)
    params, fns = functional_lm(model)
    want = np.asarray(fns.score(params, *score_args(batch)))
    plain = with_params(model, params)
    assert lora.has_lora(model) and not lora.has_lora(plain)  # the training graph keeps its own
    save_pretrained(plain, str(tmp_path / "hf"))
    assert not [n for n in SafetensorsReader(str(tmp_path / "hf")).names if "lora" in n]
    checkpoint.save_model(str(tmp_path / "ours"), plain)
    base = functional_lm(build_decoder(STUDENT, seed=1))
    assert np.abs(base[1].score(base[0], *score_args(batch)) - want).max() > 1e-2
    for loaded in (
        load_pretrained(str(tmp_path / "hf")),
        checkpoint.load_model(str(tmp_path / "ours")),
    ):
        p, f = functional_lm(loaded)
        np.testing.assert_allclose(f.score(p, *score_args(batch)), want, atol=1e-5)


def test_the_step_on_the_8_device_mesh_equals_one_device(pair):
    """(5) data x fsdp x tensor = 2 x 2 x 2: the adapters are split as their kernels (A by the
    kernel's input, B by its output) and one step matches the unsharded step to 1e-5."""
    t_params, t_fns, batch = pair
    tx, config = optax.adam(1e-2), step_config()
    mesh = sharding.make_mesh(2, 2, 2)
    params, fns = functional_lm(lora_student(b_scale=0.3))
    state, shardings = sharding.init_train_state(params, tx, mesh, trainable=lora.trainable_params)
    specs = {
        sharding.path_string(p).removesuffix("/value"): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(shardings["params"])[0]
    }
    attn = "layers/0/self_attn"
    assert specs[f"{attn}/q_proj/kernel"] == P("fsdp", "tensor")  # column-parallel
    assert specs[f"{attn}/q_proj/lora_a"] == P("fsdp", None)
    assert specs[f"{attn}/q_proj/lora_b"] == P(None, "tensor")
    assert specs[f"{attn}/o_proj/kernel"] == P("tensor", "fsdp")  # row-parallel
    assert specs[f"{attn}/o_proj/lora_a"] == P("tensor", None)
    assert specs[f"{attn}/o_proj/lora_b"] == P(None, "fsdp")
    t_shardings = sharding.tree_shardings(t_params, mesh)
    step = make_train_step(
        config, fns, t_fns, tx, mesh=mesh, state_shardings=shardings, teacher_shardings=t_shardings
    )
    state, m = step(state, jax.device_put(t_params, t_shardings), batch)
    ref_params, _ = functional_lm(lora_student(b_scale=0.3))
    ref, ref_m = make_train_step(config, fns, t_fns, tx)(
        one_device_state(ref_params, tx), t_params, batch
    )
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
    got, want = (lora.split_trainable(s["params"])[0] for s in (state, ref))
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_a_restored_state_continues_as_the_uninterrupted_one(tmp_path, pair):
    """(6) The train-state checkpoint of a LoRA student holds its adapters, their Adam state and
    the step, no base weight; restored into a fresh start (the base built again from the same
    source, as config.init is read on every start), two more steps end bit for bit where four
    uninterrupted ones do. (The trainer's own stop / resume: the slow test below.)"""
    t_params, t_fns, batch = pair
    tx = optax.adam(1e-2)

    def fresh():
        params, fns = functional_lm(lora_student())
        return one_device_state(params, tx), fns

    state, fns = fresh()
    step = make_train_step(step_config(), fns, t_fns, tx)

    def run(state, n):
        for _ in range(n):
            state, _ = step(state, t_params, batch)
        return state

    straight = lora.split_trainable(run(state, 4)["params"])[0]
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=1) as ckpts:
        ckpts.save(2, run(fresh()[0], 2), {})
    saved = (tmp_path / "ck" / "2" / "state" / "_METADATA").read_text()
    assert (
        "lora_a" in saved and "mu" in saved and "kernel" not in saved and "embedding" not in saved
    )
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=1) as ckpts:
        restored, _ = ckpts.restore_latest(fresh()[0], max_step=4)
    assert int(restored["step"]) == 2
    resumed = lora.split_trainable(run(restored, 2)["params"])[0]
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_stop_and_resume_ends_with_the_uninterrupted_adapters(tmp_path, tiny_models):  # noqa: F811
    """(6) The real trainer on the 8-device mesh: stopped by stop_after_steps at step 2 (the
    checkpoint holds adapters, their Adam state and the step: no base weight), resumed (the
    base read again from config.init), it ends bit for bit where the uninterrupted run does."""

    def config(**top):
        c = tiny_config(tiny_models, steps=4, log_every=2, **top)
        c.lora.rank, c.lora.alpha = RANK, ALPHA
        c.gkd.lmbda = 0.0  # dataset completions: no sampler to compile
        return c

    trainer.train_and_evaluate(config(), str(tmp_path / "straight"))
    with pytest.raises(preemption.Preempted):
        trainer.train_and_evaluate(config(stop_after_steps=2), str(tmp_path / "resumed"))
    saved = (tmp_path / "resumed" / "checkpoints" / "2" / "state" / "_METADATA").read_text()
    assert "lora_a" in saved and "lora_b" in saved
    assert "kernel" not in saved and "embedding" not in saved and "norm" not in saved
    trainer.train_and_evaluate(config(), str(tmp_path / "resumed"))
    final = [
        jax.tree.leaves(nnx.state(checkpoint.load_model(str(tmp_path / w / "model")), nnx.Param))
        for w in ("straight", "resumed")
    ]
    start = jax.tree.leaves(nnx.state(checkpoint.load_model(str(tiny_models / "init"))))
    for x, y in zip(*final, strict=True):
        np.testing.assert_array_equal(x, y)  # merged W + (alpha/r) A B, bit for bit
    assert any(not np.array_equal(x, y) for x, y in zip(final[0], start, strict=True))


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(rank=-1), r"config.lora.rank=-1 is invalid: must be an integer >= 0"),
        (dict(rank=True), r"config.lora.rank=True is invalid"),
        (dict(alpha=float("nan")), r"config.lora.alpha=nan is invalid: must be finite"),
        (dict(targets="q_proj("), r"config.lora.targets='q_proj\(' is invalid: is not a valid"),
        (dict(rank=8, adafactor=True), r"config.optim.name='adafactor' .* use optim.name='adamw'"),
        (dict(rank=8, targets="lm_head", fused=True), r"adapts lm_head, but gkd.loss_impl='fused'"),
    ],
)
def test_bad_lora_settings_fail_at_start_up(fields, match):
    """(7) What the config alone shows, at validate_config."""
    c = base_config()
    if fields.pop("adafactor", False):
        c.optim.name = "adafactor"
    if fields.pop("fused", False):
        c.gkd.loss_impl = "fused"
    c.lora.update(fields)
    with pytest.raises(ValueError, match=match):
        validate_config(c)


def test_lora_errors_that_need_the_model():
    """(7) What only the student's layers show, when the adapters are added (before any
    compilation): a regex that matches no linear layer, a rank above a layer's dimensions."""
    with pytest.raises(ValueError, match=r"targets='embed' matches none .* linear layers, e.g."):
        lora.add_lora(build_decoder(STUDENT), rank=2, alpha=2.0, targets="embed")
    with pytest.raises(ValueError, match=r"rank=9 exceeds .*/k_proj \[16, 8\].* rank <= 8"):
        lora.add_lora(build_decoder(STUDENT), rank=9, alpha=2.0)


def test_the_planner_holds_optimizer_state_for_the_adapters_only():
    """planning/planner.py builds the train state as the trainer does: with LoRA, the optimizer
    state of the adapters only (shapes, nothing compiled)."""
    c = base_config()
    c.lora.rank = RANK
    planner = plan.Planner(c, plan_target.topology("cpu:8"))
    adapters, _ = lora.split_trainable(planner.params)
    moments = [x for x in jax.tree.leaves(planner.state["opt_state"]) if x.ndim]
    assert sorted(x.shape for x in moments) == sorted(
        [x.shape for x in jax.tree.leaves(adapters)] * 2
    )
    assert "lora_a" in str(jax.tree_util.tree_structure(planner.state_shardings["opt_state"]))


def test_t5_adapters_start_at_the_plain_model_and_merge_exactly(pair):
    """T5's equivalents: SelfAttention / EncDecAttention q, k, v, o and DenseReluDense wi_0,
    wi_1, wo are adapted (not lm_head); B = 0 gives the plain logits, a trained B's merged
    model the LoRA model's."""
    _, _, batch = pair
    model = build_model(T5Config(32, 16, 4, 32, 2, 4, gated=True, tie_embeddings=False), seed=1)
    plain_params, plain_fns = functional_lm(model)
    score = jax.jit(plain_fns.score)
    want = score(plain_params, *score_args(batch))
    lora.add_lora(model, rank=RANK, alpha=ALPHA)
    adapted = [
        lora.path_name(p) for p, m in nnx.iter_modules(model) if isinstance(m, lora.LoRALinear)
    ]
    assert len(adapted) == 2 * 7 + 2 * 11 and not [p for p in adapted if "lm_head" in p]
    params, fns = functional_lm(model)
    lora_score = jax.jit(fns.score)
    np.testing.assert_allclose(lora_score(params, *score_args(batch)), want, atol=1e-6)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.3 * rng.normal(size=x.shape).astype(np.float32)
        if "lora_b" in sharding.path_string(p) else x,
        params,
    )  # fmt: skip
    lora_logits = lora_score(params, *score_args(batch))
    merged_params, _ = functional_lm(with_params(model, params))
    np.testing.assert_allclose(score(merged_params, *score_args(batch)), lora_logits, atol=1e-5)
    assert np.abs(lora_logits - want).max() > 1e-2
