"""Train-state checkpoints, exact resume, preemption, non-finite steps, metrics that survive.

The end-to-end tests run the real `python -m gkd_jax.train` in subprocesses on a tiny GKD config
(random tiny teacher and student saved here, 24 steps) and compare against one uninterrupted
run: final parameters bit for bit, and every logged loss. They share a persistent XLA
compilation cache, so only the first run pays for compiling (~25 s, then ~9 s a run).
"""

import glob
import json
import os
import signal
import struct
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
from gkd_jax.data import pipeline
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm
from gkd_jax.training import checkpoint, preemption, trainer
from gkd_jax.training.metrics_log import MetricsLog, masked_crc32c

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = DecoderConfig(99, 16, 1, 2, 1, 32)  # the arith character vocabulary (99)
TEACHER = DecoderConfig(99, 32, 1, 2, 1, 64)
STEPS, LOG_EVERY = 24, 4


# ---------------------------------------------------------------------------- data position
def test_batches_resume_at_any_step():
    data = {"x": np.arange(50)}  # 6 batches of 8 per epoch, 2 rows left over
    full = pipeline.batches(data, 8, seed=3)
    first = [next(full)["x"] for _ in range(20)]
    # start=0 is the original algorithm: one permutation per epoch, whole batches in order.
    rng, expected = np.random.default_rng(3), []
    for _ in range(4):
        order = rng.permutation(50)
        expected += [order[i : i + 8] for i in range(0, 43, 8)]
    np.testing.assert_array_equal(first, expected[:20])
    for start in (1, 5, 6, 7, 13):
        it = pipeline.batches(data, 8, seed=3, start=start)
        np.testing.assert_array_equal([next(it)["x"] for _ in range(20 - start)], first[start:])


# ---------------------------------------------------------------------------- non-finite steps
def tiny_step(tx):
    params, student = functional_lm(build_decoder(STUDENT, seed=1))
    t_params, teacher = functional_lm(build_decoder(TEACHER, seed=2))
    config = base_config()
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return trainer.make_train_step(config, student, teacher, tx), state, t_params


def tiny_batch(b=8, p=6, n=5):
    rng = np.random.default_rng(0)
    return dict(
        prompt=jnp.asarray(rng.integers(3, 99, (b, p)), jnp.int32),
        prompt_mask=jnp.ones((b, p), bool),
        completion=jnp.asarray(rng.integers(3, 99, (b, n)), jnp.int32),
        completion_mask=jnp.ones((b, n), bool),
    )


def test_nonfinite_step_leaves_params_and_optimizer_state_unchanged():
    tx = optax.adamw(1e-2)
    step, state, t_params = tiny_step(tx)
    batch = tiny_batch()
    state, m = step(state, t_params, batch)  # one good step: Adam moments are non-zero now
    assert float(m["nonfinite"]) == 0.0
    before = jax.tree.map(np.array, (state["params"], state["opt_state"]))
    poisoned = jax.tree.map(lambda x: x * jnp.nan, t_params)  # NaN teacher logits -> NaN loss
    state, m = step(state, poisoned, batch)
    assert float(m["nonfinite"]) == 1.0 and not np.isfinite(float(m["loss"]))
    after = jax.tree.map(np.array, (state["params"], state["opt_state"]))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit, Adam's step count included
    assert int(state["step"]) == 2  # the step itself advances (new data and samples next)
    state, m = step(state, t_params, batch)
    assert float(m["nonfinite"]) == 0.0
    assert not np.array_equal(jax.tree.leaves(state["params"])[0], jax.tree.leaves(before)[0])
    assert step._cache_size() == 1


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A random tiny teacher and student start, saved like any checkpoint the config names."""
    root = tmp_path_factory.mktemp("models")
    checkpoint.save_model(str(root / "teacher"), build_decoder(TEACHER, seed=1))
    checkpoint.save_model(str(root / "init"), build_decoder(STUDENT, seed=2))
    return root


def tiny_config(models, **top):
    """GKD on arith with the tiny models: 16-row batches, 16 eval problems, no HF export."""
    c = base_config()
    c.model.update(STUDENT.to_dict())
    c.teacher.model.update(TEACHER.to_dict())
    c.teacher.checkpoint, c.init.checkpoint = str(models / "teacher"), str(models / "init")
    c.steps, c.log_every, c.batch_size = STEPS, LOG_EVERY, 16
    c.data.train_examples, c.eval.num_examples, c.eval.batch_size = 256, 16, 16
    c.export.hf = False
    c.update(top)
    return c


def test_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path, tiny_models, monkeypatch
):
    """The real step and loop, with the teacher's parameters turned to NaN from the 4th call."""
    real = trainer.make_train_step

    def poisoned_from_4th_call(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def run(state, teacher_params, batch):
            calls.append(1)
            if len(calls) >= 4:
                teacher_params = jax.tree.map(lambda x: x * jnp.nan, teacher_params)
            return step(state, teacher_params, batch)

        return run

    monkeypatch.setattr(trainer, "make_train_step", poisoned_from_4th_call)
    config = tiny_config(tiny_models, log_every=1, max_nonfinite_steps=3, steps=20)
    config.gkd.lmbda = 0.0  # dataset completions: no sampler to compile
    config.checkpoint.every_steps = 2
    with pytest.raises(FloatingPointError, match=r"step 6: .* 3 steps in a row") as err:
        trainer.train_and_evaluate(config, str(tmp_path))
    last_good = str(tmp_path / "checkpoints" / "2")
    assert f"last good checkpoint is {last_good} (step 2)" in str(err.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # step 4 was in the bad run
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["nonfinite"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 0, 1, 2, 3]
    assert np.isfinite([r["loss"] for r in rows[:3]]).all()
    assert not np.isfinite([r["loss"] for r in rows[3:]]).any()


def test_out_of_vocab_count_is_logged_and_survives_a_resume(
    tmp_path, tiny_models, monkeypatch, capsys
):
    """The real step and loop, with one completion id past the vocabulary injected per step:
    metrics.jsonl counts them cumulatively, and a resumed run carries the count on."""
    real = trainer.make_train_step

    def one_bad_id_per_step(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(state, teacher_params, batch):
            completion, mask = jax.device_get((batch["completion"], batch["completion_mask"]))
            completion, mask = completion.copy(), mask.copy()
            completion[0, 0], mask[0, 0] = 10**6, True
            bad = dict(batch, completion=completion, completion_mask=mask)
            return step(state, teacher_params, jax.device_put(bad, batch["completion"].sharding))

        return run

    monkeypatch.setattr(trainer, "make_train_step", one_bad_id_per_step)
    config = tiny_config(tiny_models, log_every=1, steps=4, stop_after_steps=2)
    config.gkd.lmbda = 0.0  # dataset completions: no sampler to compile
    with pytest.raises(preemption.Preempted):
        trainer.train_and_evaluate(config, str(tmp_path))
    config.stop_after_steps = 0
    trainer.train_and_evaluate(config, str(tmp_path))  # resumed at step 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["out_of_vocab_ids"]) for r in rows] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    out = capsys.readouterr().out
    assert "resuming from step 2" in out
    assert "WARNING: step 4: 1 completion token ids outside the shared vocabulary [0, 99)" in out


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoints_rotate_restore_replicated_and_skip_a_partial_save(tmp_path):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    params, _ = functional_lm(build_decoder(STUDENT, seed=1))
    tx = optax.adamw(1e-3)
    state = jax.device_put(
        {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)},
        replicated,
    )
    plus = jax.jit(lambda s, k: jax.tree.map(lambda x: x + k, s))
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=2) as ckpts:
        for k in (1, 2, 3):
            ckpts.save(k, plus(state, k), {"k": k})
    # A crash mid-save leaves orbax's temporary directory, never a half-written STEP dir.
    partial = tmp_path / "ck" / "4.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 10)
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=2) as ckpts:
        assert ckpts.latest_step() == 3
        restored, meta = ckpts.restore_latest(state, max_step=10)
    assert meta == {"k": 3}
    assert sorted(os.listdir(tmp_path / "ck")) == ["2", "3"]  # keep=2; the partial one deleted
    expected = jax.device_get(plus(state, 3))
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert x.sharding == replicated  # restored straight into the run's shardings
        np.testing.assert_array_equal(np.asarray(x), y)
    with checkpoint.TrainCheckpoints(str(tmp_path / "ck"), keep=2) as ckpts:
        with pytest.raises(ValueError, match="past config.steps=2"):
            ckpts.restore_latest(state, max_step=2)
        other = {**state, "params": {"w": jnp.zeros((3,))}}
        with pytest.raises(ValueError, match="does not fit this config"):
            ckpts.restore_latest(other, max_step=10)


# ---------------------------------------------------------------------------- metrics
def read_events(path):
    """(step, tag, value) of every scalar, and the steps of restart markers, in an event file:
    TFRecord framing checked against its CRCs, then the few protobuf fields we write."""

    def varint(buf, i):
        shift = value = 0
        while True:
            b = buf[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not b & 0x80:
                return value, i

    def fields(buf):
        i, out = 0, []
        while i < len(buf):
            key, i = varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint(buf, i)
            elif wire == 1:
                value, i = buf[i : i + 8], i + 8
            elif wire == 5:
                value, i = buf[i : i + 4], i + 4
            else:
                n, i = varint(buf, i)
                value, i = buf[i : i + n], i + n
            out.append((number, value))
        return out

    data, i, scalars, restarts = open(path, "rb").read(), 0, [], []
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
        record = data[i + 12 : i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] == masked_crc32c(record)
        i += 16 + n
        event = dict(fields(record))
        step = event.get(2, 0)
        if 7 in event:
            restarts.append(step)
        for number, value in fields(record):
            if number == 5:  # summary: repeated Value {tag = 1, simple_value = 2}
                for _, v in fields(value):
                    v = dict(fields(v))
                    scalars.append((step, v[1].decode(), struct.unpack("<f", v[2])[0]))
    return scalars, restarts


def test_metrics_log_resumes_without_duplicates(tmp_path):
    log = MetricsLog(str(tmp_path), 0)
    for s in (2, 4, 6):
        log.write(s, {"train/loss": 1.0 / s})
    log.write(0, {"eval/accuracy": 0.25})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # a line cut short by a crash
    log = MetricsLog(str(tmp_path), 4)  # resumed from a checkpoint at step 4
    log.write(6, {"train/loss": 0.5})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.25}, {"step": 6, "loss": 0.5}]
    first, second = sorted(glob.glob(str(tmp_path / "tensorboard" / "*tfevents*")))
    scalars, restarts = read_events(first)
    assert restarts == [1]
    assert (0, "eval/accuracy", 0.25) in scalars
    losses = [(s, v) for s, t, v in scalars if t == "train/loss"]
    assert losses == [(2, 0.5), (4, 0.25), (6, np.float32(1 / 6))]  # float32 in the event
    scalars, restarts = read_events(second)
    assert restarts == [5] and scalars == [(6, "train/loss", 0.5)]
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"))  # the reader TensorBoard uses
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(2, 0.5), (4, 0.25), (6, 0.5)]


# ---------------------------------------------------------------------------- end to end
def tiny_flags(models):
    flags = [
        "--config=configs/arith.py:smoke",
        f"--config.teacher.checkpoint={models / 'teacher'}",
        f"--config.init.checkpoint={models / 'init'}",
        f"--config.steps={STEPS}",
        f"--config.log_every={LOG_EVERY}",
        "--config.eval.num_examples=16",
        "--config.eval.batch_size=16",
        "--config.export.hf=False",
    ]
    for prefix, cfg in (("model", STUDENT), ("teacher.model", TEACHER)):
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            flags.append(f"--config.{prefix}.{field}={getattr(cfg, field)}")
        flags.append(f"--config.{prefix}.intermediate_size={cfg.intermediate_size}")
    return flags


class Runs:
    """Runs `python -m gkd_jax.train` on the tiny config, sharing one compilation cache."""

    def __init__(self, models, cache):
        self.flags = tiny_flags(models)
        self.env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )

    def command(self, workdir, *extra):
        return [sys.executable, "-m", "gkd_jax.train", *self.flags, *extra, f"--workdir={workdir}"]

    def run(self, workdir, *extra):
        proc = subprocess.run(
            self.command(workdir, *extra), cwd=REPO, env=self.env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout

    def start(self, workdir, stderr_path, *extra):
        with open(stderr_path, "w") as err:
            return subprocess.Popen(
                self.command(workdir, *extra), cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                stderr=err, text=True, bufsize=1,
            )  # fmt: skip


@pytest.fixture(scope="module")
def straight(tiny_models, tmp_path_factory):
    """The reference: one uninterrupted run of STEPS steps."""
    runs = Runs(tiny_models, tmp_path_factory.mktemp("xla_cache"))
    workdir = tmp_path_factory.mktemp("straight")
    runs.run(workdir)
    return runs, workdir


def final_params(workdir):
    return jax.tree.leaves(nnx.state(checkpoint.load_model(str(workdir / "model")), nnx.Param))


def assert_same_params(a, b):
    for x, y in zip(final_params(a), final_params(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit


def metric_rows(workdir):
    """metrics.jsonl rows without the timing column (which no two runs share)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]


def test_same_config_same_metrics_run_to_run(straight, tmp_path):
    runs, reference = straight
    runs.run(tmp_path)
    assert metric_rows(tmp_path) == metric_rows(reference)
    assert [r["step"] for r in metric_rows(tmp_path)] == list(range(LOG_EVERY, STEPS + 1, 4))
    assert_same_params(tmp_path, reference)


def test_stop_then_resume_is_bit_exact(straight, tmp_path):
    runs, reference = straight
    out = runs.run(tmp_path, "--config.stop_after_steps=12")
    assert "stopped (config.stop_after_steps=12) at step 12: checkpoint saved" in out
    assert os.listdir(tmp_path / "checkpoints") == ["12"] and not (tmp_path / "model").exists()
    out = runs.run(tmp_path)  # the same command, resumed
    assert out.count("resuming from step 12") == 1
    assert "[eval] start:" in out and "(stored in the checkpoint)" in out
    assert_same_params(tmp_path, reference)
    assert metric_rows(tmp_path) == metric_rows(reference)  # steps 4..24, each once
    results = [json.loads((w / "results.json").read_text()) for w in (tmp_path, reference)]
    assert results[0]["scores"] == results[1]["scores"]
    # TensorBoard: both runs' event files; the second one continues after a restart marker.
    first, second = sorted(glob.glob(str(tmp_path / "tensorboard" / "*tfevents*")))
    losses = {s: v for f in (first, second) for s, t, v in read_events(f)[0] if t == "train/loss"}
    assert read_events(second)[1] == [13]
    expected = {r["step"]: np.float32(r["loss"]) for r in metric_rows(reference)}
    assert losses == expected


def test_sigterm_finishes_the_step_saves_and_exits_0_then_resumes(straight, tmp_path):
    runs, reference = straight
    proc = runs.start(tmp_path, tmp_path / "stderr.txt")
    lines = []
    for line in proc.stdout:  # SIGTERM once a training step has been logged
        lines.append(line)
        if line.startswith(f"step {LOG_EVERY:5d}/"):
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    message = [line for line in lines if line.startswith("preempted at step")]
    assert len(message) == 1, lines
    k = int(message[0].split()[3].rstrip(":"))
    assert message[0].strip() == (
        f"preempted at step {k}: checkpoint saved, rerun the same command to resume"
    )
    assert LOG_EVERY <= k < STEPS and os.listdir(tmp_path / "checkpoints") == [str(k)]
    out = runs.run(tmp_path)
    assert out.count(f"resuming from step {k}") == 1
    assert_same_params(tmp_path, reference)
    assert metric_rows(tmp_path)[-1] == metric_rows(reference)[-1]
    after_k = [r for r in metric_rows(tmp_path) if r["step"] > k]
    same_steps = [r for r in metric_rows(reference) if r["step"] > k]
    # The first window after the restart is shorter: its on-policy fraction covers fewer steps.
    no_window = lambda rows: [{n: v for n, v in r.items() if n != "on_policy"} for r in rows]
    assert no_window(after_k) == no_window(same_steps)


@pytest.mark.slow
def test_sigkill_mid_save_resumes_from_the_last_complete_checkpoint(straight, tmp_path):
    """kill -9 while checkpoints are being written every step: the rerun resumes from the last
    complete one (orbax's temporary directory of the interrupted save is ignored, then deleted)
    and still ends bit for bit where the uninterrupted run does."""
    runs, reference = straight
    every_step = ("--config.checkpoint.every_steps=1", "--config.checkpoint.keep=2")
    proc = runs.start(tmp_path, tmp_path / "stderr.txt", *every_step)
    for line in proc.stdout:
        if line.startswith(f"step {2 * LOG_EVERY:5d}/"):
            proc.kill()
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL
    left = os.listdir(tmp_path / "checkpoints")
    steps = sorted(int(name) for name in left if name.isdigit())
    assert steps and max(steps) < STEPS, left
    out = runs.run(tmp_path, *every_step)
    assert out.count(f"resuming from step {max(steps)}") == 1, (left, out)
    assert_same_params(tmp_path, reference)
    print(f"killed with {left} in checkpoints/; resumed from step {max(steps)}")


def test_periodic_evaluation_keeps_the_best_student(tmp_path, tiny_models):
    config = tiny_config(tiny_models, steps=6)
    config.eval.every_steps = 2
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    trained = {}  # step -> the student's accuracy at each evaluation after the start
    for name in os.listdir(tmp_path / "tensorboard"):
        scalars, _ = read_events(tmp_path / "tensorboard" / name)
        trained |= {s: v for s, tag, v in scalars if tag == "eval/accuracy" and s > 0}
    assert set(trained) == {2, 4, 6}
    np.testing.assert_allclose(trained[6], summary["scores"]["final"], rtol=1e-6)
    meta = json.loads((tmp_path / "best_model" / checkpoint.CONFIG_FILE).read_text())["best"]
    np.testing.assert_allclose(meta["accuracy"], max(trained.values()), rtol=1e-6)
    firsts = [s for s, v in sorted(trained.items()) if abs(v - max(trained.values())) < 1e-6]
    assert meta["step"] == firsts[0]
    assert checkpoint.load_model(str(tmp_path / "best_model"), expected=STUDENT)
