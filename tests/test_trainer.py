"""The GKD step, the loop around it, and the start-up checks."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gkd_jax.config.defaults import base_config
from gkd_jax.decoding.sampling import SampleOutput
from gkd_jax.evaluation.evaluator import decode_split, eval_key
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm
from gkd_jax.objectives import losses
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint, optim, trainer
from gkd_jax.training.step import training_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 23
SGD_LR = 0.5
STUDENT = DecoderConfig(V, 16, 1, 2, 1, 32)
TEACHER = DecoderConfig(V, 24, 2, 4, 2, 48)


def gkd_config(**gkd):
    c = base_config()
    c.gkd.update(gkd)
    c.optim.warmup_steps = 0
    c.optim.learning_rate = 1e-2
    c.steps = 10
    return c


def random_batch(b=16, p=6, n=5, seed=0):
    rng = np.random.default_rng(seed)
    plen = rng.integers(1, p + 1, b)
    clen = rng.integers(0, n + 1, b)  # includes empty completions
    prompt_mask = np.arange(p)[None] >= (p - plen)[:, None]
    completion_mask = np.arange(n)[None] < clen[:, None]
    return dict(
        prompt=np.where(prompt_mask, rng.integers(3, V, (b, p)), 0).astype(np.int32),
        prompt_mask=prompt_mask,
        completion=np.where(completion_mask, rng.integers(3, V, (b, n)), 0).astype(np.int32),
        completion_mask=completion_mask,
    )


def completion_logits(model, prompt, prompt_mask, completion, completion_mask):
    """Through the model's public call on the concatenated sequence: logits that predict each
    completion token [B, N, V] (position t predicts token t + 1)."""
    p, n = prompt.shape[1], completion.shape[1]
    tokens = jnp.concatenate([prompt, completion], axis=1)
    valid = jnp.concatenate([prompt_mask, completion_mask], axis=1)
    return model(tokens, attention_mask=valid)[:, p - 1 : p + n - 1]


def setup_step(config, dtype=jnp.float32, tx=None):
    """The real step. Default optimizer: plain SGD, whose update is proportional to the gradient
    (AdamW's first step is nearly scale-free, so it would hide a wrongly normalised gradient)."""
    params, student = functional_lm(build_decoder(STUDENT, seed=1, dtype=dtype))
    t_params, teacher = functional_lm(build_decoder(TEACHER, seed=2, dtype=dtype))
    tx = tx or optax.sgd(SGD_LR)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return trainer.make_train_step(config, student, teacher, tx), state, t_params


def run_step(config, devices, batch, dtype=jnp.float32):
    step, state, t_params = setup_step(config, dtype)
    mesh = Mesh(np.array(devices), ("data",))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state, metrics = step(
        jax.device_put(state, rep), jax.device_put(t_params, rep), jax.device_put(batch, rows)
    )
    return jax.device_get(state["params"]), jax.device_get(metrics)


def assert_trees_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_step_on_8_devices_equals_1_device(reduction):
    assert jax.device_count() == 8
    config = gkd_config(reduction=reduction, beta=0.5)
    batch = random_batch()
    p1, m1 = run_step(config, jax.devices()[:1], batch)
    p8, m8 = run_step(config, jax.devices(), batch)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
    assert_trees_close(p1, p8)


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_step_gradient_is_the_gradient_of_the_batch_mean(reduction):
    """SGD step = -lr * d/dparams of the masked mean of the per-token JSD over the whole batch."""
    config = gkd_config(reduction=reduction, beta=0.9)
    batch = random_batch()
    new_params, metrics = run_step(config, jax.devices()[:1], batch)
    student, teacher = build_decoder(STUDENT, seed=1), build_decoder(TEACHER, seed=2)
    graphdef, params = nnx.split(student)
    args = [jnp.asarray(batch[k]) for k in ("prompt", "prompt_mask", "completion")]
    args.append(jnp.asarray(batch["completion_mask"]))
    t_logits = completion_logits(teacher, *args)

    def mean_loss(p):
        per_token = losses.generalized_jsd(
            completion_logits(nnx.merge(graphdef, p), *args), t_logits, beta=0.9
        )
        return losses.masked_mean(per_token, args[3], reduction)

    # jitted: one compile instead of one per primitive of the eager backward pass
    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(params)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    expected = jax.tree.map(lambda p, g: p - SGD_LR * g, params, grads)
    assert_trees_close(jax.device_get(expected), new_params, tol=2e-6)


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_gradient_accumulation_equals_one_big_batch(reduction):
    batch = random_batch(b=16)
    config = gkd_config(reduction=reduction, beta=0.1)
    p1, m1 = run_step(config, jax.devices()[:1], batch)
    config.grad_accum = 4
    p4, m4 = run_step(config, jax.devices()[:1], batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    assert_trees_close(p1, p4)


def test_teacher_frozen_student_learns_one_compile():
    config = gkd_config(beta=0.0)
    step, state, t_params = setup_step(config, tx=optim.make_optimizer(config))
    t_before = jax.tree.map(np.array, t_params)
    batch = jax.tree.map(jnp.asarray, random_batch())
    loss = []
    for _ in range(4):
        state, m = step(state, t_params, batch)
        loss.append(float(m["loss"]))
    assert step._cache_size() == 1
    assert_trees_close(t_before, t_params, tol=0)
    assert loss[-1] < loss[0]  # forward KL to a fixed teacher on fixed data goes down


def test_make_optimizer_warmup_then_decay():
    config = gkd_config()
    config.optim.update(learning_rate=1e-2, warmup_steps=5, final_lr_fraction=0.1, grad_clip=1e9)
    tx = optim.make_optimizer(config)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    lrs = []
    for _ in range(config.steps):  # a constant gradient: Adam's update is exactly the lr
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(updates["w"]))
    np.testing.assert_allclose(lrs[:6], [0, 2e-3, 4e-3, 6e-3, 8e-3, 1e-2], atol=1e-6)  # warmup
    assert all(np.diff(lrs[5:]) < 0) and lrs[-1] > 1e-3  # cosine decay towards 10%


def test_bfloat16_compute_is_finite_and_close():
    config = gkd_config(beta=0.5)
    batch = random_batch()
    p32, m32 = run_step(config, jax.devices()[:1], batch)
    p16, m16 = run_step(config, jax.devices()[:1], batch, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))  # params stay float32
    assert np.isfinite(m16["loss"]) and np.isfinite(m16["grad_norm"])
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=5e-2)


def fake_samplers(b, n):
    def make(value):
        def sampler(params, prompt, prompt_mask, rng):
            return SampleOutput(
                jnp.full((b, n), value, jnp.int32), jnp.ones((b, n), bool), None, None
            )

        return sampler

    return {"student": make(1), "teacher": make(2)}


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_lmbda_draws(mode):
    b, n = 64, 3
    batch = random_batch(b=b, n=n)
    target = jnp.full((b, n), 7, jnp.int32)
    key = jax.random.key(0)

    def draw(step, lmbda, seq_kd=False):
        config = gkd_config(lmbda=lmbda, lmbda_mode=mode, seq_kd=seq_kd)
        config.steps = 100  # draws at steps up to 40
        tokens, _, frac = trainer.gkd_completions(
            config, step, fake_samplers(b, n), None, None, key, batch["prompt"],
            batch["prompt_mask"], target, jnp.ones((b, n), bool),
        )  # fmt: skip
        return np.asarray(tokens)[:, 0], frac

    assert set(draw(0, 0.0)[0]) == {7}  # supervised KD: dataset targets
    assert set(draw(0, 0.0, seq_kd=True)[0]) == {2}  # SeqKD: teacher samples
    assert set(draw(0, 1.0)[0]) == {1}  # on-policy: student samples
    fracs = [draw(s, 0.5)[1] for s in range(40)]
    if mode == "batch":
        assert set(fracs) == {0.0, 1.0}
    else:
        assert all(0.2 < f < 0.8 for f in fracs)
    assert 0.3 < np.mean(fracs) < 0.7
    np.testing.assert_array_equal(draw(5, 0.5)[0], draw(5, 0.5)[0])  # seeded by (seed, step)


def test_out_of_vocab_completion_ids_are_counted():
    """The step's guard: completion ids < 0 or >= the shared vocabulary, masked in only."""
    config = gkd_config()
    step, state, t_params = setup_step(config)
    batch = random_batch()
    _, clean = step(state, t_params, batch)
    assert int(clean["out_of_vocab"]) == 0
    completion, mask = batch["completion"].copy(), batch["completion_mask"]
    rows, cols = np.nonzero(mask)
    completion[rows[:3], cols[:3]] = [V, V + 7, -1]  # masked in: counted
    out_rows, out_cols = np.nonzero(~mask)
    completion[out_rows[:2], out_cols[:2]] = V + 1  # masked out (padding): not counted
    _, state2, _ = setup_step(config)
    _, m = step(state2, t_params, dict(batch, completion=completion))
    assert int(m["out_of_vocab"]) == 3


def test_eval_sampling_keys_are_not_training_keys():
    """Sampled evaluation batch i draws with eval_key, never training step i's key (seed 0 is
    both the default seed and decode_split's)."""
    for seed in (0, 3):
        base = jax.random.key(seed)
        train = {tuple(np.asarray(jax.random.key_data(training_key(base, i))))
                 for i in range(64)}  # fmt: skip
        evals = {tuple(np.asarray(jax.random.key_data(eval_key(base, i))))
                 for i in range(64)}  # fmt: skip
        assert len(train) == len(evals) == 64 and not train & evals
    # decode_split samples batch i with eval_key(key(seed), i).
    got = []

    def sampler(params, prompt, prompt_mask, rng):
        got.append(np.asarray(jax.random.key_data(rng)))
        return SampleOutput(jnp.zeros(prompt.shape, jnp.int32), jnp.ones(prompt.shape, bool), 0, 0)

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    data = {k: v for k, v in random_batch(b=20).items() if k.startswith("prompt")}
    decode_split(sampler, None, data, 8, mesh, seed=0)
    want = [eval_key(jax.random.key(0), i) for i in range(3)]  # 20 rows: 3 batches
    np.testing.assert_array_equal(got, [np.asarray(jax.random.key_data(k)) for k in want])


def tiny_run_config():
    """A GKD config whose teacher and student start are trained in the workdir, in seconds."""
    from gkd_jax.config.loading import load_config_file

    return load_config_file(os.path.join(REPO, "configs", "arith.py:smoke"))


def fails_before_compiling(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("compiled before the config was checked")

    monkeypatch.setattr(trainer, "make_sampler", forbidden)
    monkeypatch.setattr(trainer, "make_train_step", forbidden)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("gkd.lmbda", 1.5, "gkd.lmbda"),
        ("gkd.beta", -0.1, "gkd.beta"),
        ("sampling.temperature", 0.0, "sampling.temperature"),
        ("gkd.teacher_temperature", -1.0, "gkd.teacher_temperature"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("gkd.reduction", "mean", "gkd.reduction"),
        ("gkd.lmbda_mode", "row", "gkd.lmbda_mode"),
        ("task", "nope", "nope"),
        ("teacher.model.vocab_size", 128, "share one vocabulary"),
        ("batch_size", 12, "batch_size"),
        ("checkpoint.every_steps", -1, r"checkpoint.every_steps=-1 .* >= 0"),
        ("checkpoint.keep", 0, r"checkpoint.keep=0 .* >= 1"),
        ("max_nonfinite_steps", 0, r"max_nonfinite_steps=0 .* >= 1"),
        ("stop_after_steps", -5, r"stop_after_steps=-5 .* >= 0"),
    ],
)
def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, field, value, match):
    fails_before_compiling(monkeypatch)
    config = tiny_run_config()
    config.unlock()
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_workdir_with_another_model_shape(tmp_path, monkeypatch):
    fails_before_compiling(monkeypatch)
    checkpoint.save_model(str(tmp_path / "model"), build_decoder(DecoderConfig(99, 8, 1, 2, 1, 8)))
    with pytest.raises(ValueError, match="another shape"):
        trainer.train_and_evaluate(tiny_run_config(), str(tmp_path))


def test_sft_learns_the_exact_target_tokens(tmp_path):
    """Alignment check: SFT memorises a few examples, and greedy decoding reproduces them."""
    from gkd_jax.config.loading import load_config_file

    config = load_config_file(os.path.join(REPO, "configs", "arith_sft.py:role=student,smoke"))
    config.unlock()
    config.data.train_examples = config.eval.num_examples = config.batch_size = 8
    config.eval.batch_size = 8
    config.steps, config.optim.learning_rate, config.optim.warmup_steps = 150, 1e-2, 10
    config.optim.weight_decay = 0.0
    config.model.update(hidden_size=64, intermediate_size=128)
    # Evaluate on the training examples: the eval split is the training split.
    import dataclasses

    real = trainer.get_task("arith")

    def load(*args, **kw):
        train, _ = real.load(*args, **kw)
        return train, train

    task = dataclasses.replace(real, load=load)
    orig = trainer.get_task
    trainer.get_task = lambda name: task
    try:
        summary = trainer.train_and_evaluate(config, str(tmp_path))
    finally:
        trainer.get_task = orig
    assert summary["scores"]["final"] == 1.0, summary


def test_entry_point_end_to_end(tmp_path):
    """The real `python -m gkd_jax.train` on the shrunken default: recipes, GKD, eval table
    (with the exact reverse KL to the teacher beside the accuracy)."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gkd_jax.train", "--config=configs/arith.py:smoke",
         f"--workdir={tmp_path}", "--config.eval.divergence_to_teacher=rkl"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ETA" in out and "ex/s" in out and "| student (after) |" in out
    assert "| model | accuracy | rkl_to_teacher |" in out
    summary = json.loads((tmp_path / "results.json").read_text())
    assert set(summary["scores"]) == {"teacher", "start", "final"}
    kl = summary["divergence_to_teacher"]  # the student's rows only; exact values: test_evaluate
    assert set(kl) == {"start", "final"} and min(kl.values()) > 0, kl
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and all(r["on_policy"] == 1.0 for r in rows)
    assert all(r["out_of_vocab_ids"] == 0 for r in rows)  # every sampled id in the vocabulary
    assert np.isfinite([r["loss"] for r in rows]).all()
    for name in ("teacher", "init"):  # made by their recipes, then reused
        assert checkpoint.has_model(str(tmp_path / name / "model"))
    assert checkpoint.has_model(str(tmp_path / "model"))
