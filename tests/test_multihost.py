"""Multi-host runs, on one machine: two CPU processes joined by jax.distributed over loopback
(gloo collectives, jax's CPU default) against one process with the same four devices.

Run as a script, this file is the worker: `python tests/test_multihost.py WORKDIR`.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gkd_jax.config.defaults import base_config
from gkd_jax.data import pipeline
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm, with_params
from gkd_jax.parallel import distributed
from gkd_jax.training import checkpoint, optim, trainer
from gkd_jax.training.metrics_log import MetricsLog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, B, STEPS = 23, 8, 3
TIMEOUT_S = 240  # a hung collective fails the test instead of blocking CI


# ---------------------------------------------------------------------------- the worker
def worker(workdir: str, num_devices: int) -> None:
    """Three GKD steps (lmbda=0.5 per example: student samples mixed with data) on the first
    `num_devices` global devices, through the trainer's own pieces, each host reading only its
    rows; then the write-once outputs."""
    config = base_config()
    config.objective, config.steps, config.batch_size, config.seed = "gkd", STEPS, B, 0
    config.gkd.update(lmbda=0.5, lmbda_mode="example", beta=0.5)
    config.optim.warmup_steps = 0
    student = build_decoder(DecoderConfig(V, 16, 1, 2, 1, 32), seed=1)
    teacher = build_decoder(DecoderConfig(V, 24, 1, 2, 1, 48), seed=2)
    params, s_fns = functional_lm(student)
    t_params, t_fns = functional_lm(teacher)

    mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    tx = optim.make_optimizer(config)
    state = {"params": params, "opt_state": tx.init(params), "step": np.zeros((), np.int32)}
    state, t_params = jax.device_put(state, replicated), jax.device_put(t_params, replicated)
    sampling = SamplingConfig(max_new_tokens=4, stop_ids=(1,), pad_id=0, vocab_size=V)
    samplers = {"student": make_sampler(s_fns.decoding, sampling)}
    train_step = trainer.make_train_step(config, s_fns, t_fns, tx)

    rng = np.random.default_rng(0)
    data = pipeline.pack(
        [list(rng.integers(3, V, rng.integers(1, 6))) for _ in range(4 * B)],
        [list(rng.integers(3, V, rng.integers(1, 5))) for _ in range(4 * B)],
        max_prompt_len=6, max_completion_len=4, pad_id=0,
    )  # fmt: skip
    mine = distributed.host_rows(B, rows)
    batches = pipeline.batches(data, B, config.seed, rows=mine)
    log = MetricsLog(workdir, 0, enabled=distributed.is_main_process())
    local_shapes = []
    for step in range(STEPS):
        local = next(batches)
        local_shapes.append(local["prompt"].shape)
        batch = {k: distributed.global_batch(v, rows, B) for k, v in local.items()}
        completion, completion_mask, _ = trainer.gkd_completions(
            config, step, samplers, state["params"], t_params, jax.random.key(0),
            batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"],
        )  # fmt: skip
        batch = dict(batch, completion=completion, completion_mask=completion_mask)
        state, m = train_step(state, t_params, batch)
        log.write(step + 1, {"train/loss": float(m["loss"])})

    checkpoint.save_model(os.path.join(workdir, "model"), with_params(student, state["params"]))
    me = jax.process_index()
    seen = {"rows": mine.tolist(), "local_shapes": local_shapes, "n": jax.process_count()}
    with open(os.path.join(workdir, f"process{me}.json"), "w") as f:  # for the test: one each
        json.dump(seen, f)


# ---------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    return dict(
        env,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        **extra,
    )


def launch(cmd: list[str], *, processes: int, devices: int) -> list[subprocess.Popen]:
    """`processes` copies of `cmd` joined through a coordinator on 127.0.0.1 (one process:
    distributed off), each with `devices` CPU devices."""
    if processes == 1:
        envs = [cpu_env(devices, GKD_DISTRIBUTED="off")]
    else:
        address = f"127.0.0.1:{free_port()}"
        envs = [
            cpu_env(
                devices,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES=str(processes),
                JAX_PROCESS_ID=str(i),
            )
            for i in range(processes)
        ]
    procs = []
    for e in envs:
        log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the process runs
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=e, stdout=log, stderr=subprocess.STDOUT))
        procs[-1].log = log
    return procs


def wait_all(procs: list[subprocess.Popen]) -> list[str]:
    """Their outputs once all exited 0. A failed process stops the others at once (its peers
    would wait for it in a collective), and so does the timeout: the test fails, not hangs."""

    def output(p) -> str:
        p.log.seek(0)
        return p.log.read().decode(errors="replace")

    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            why = f"exit status {failed[0].returncode}" if failed else f"hung for {TIMEOUT_S}s"
            pytest.fail(f"{why}:\n" + "\n---\n".join(output(p)[-3000:] for p in procs))
        time.sleep(0.2)
    outputs = [output(p) for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outputs


def assert_same_params(ref_dir, got_dir) -> None:
    def leaves(path):
        model = checkpoint.load_model(str(path))
        return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    for ref, got in zip(leaves(ref_dir), leaves(got_dir), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6, rtol=0)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path).read().splitlines()]


# ---------------------------------------------------------------------------- the tests
def test_two_processes_train_like_one(tmp_path, monkeypatch):
    """2 processes x 2 devices == 1 process x 4 devices (this one): losses and parameters after
    three steps (<= 1e-6); each host held only its half of every batch; process 0 alone logged."""
    one, two = tmp_path / "one", tmp_path / "two"
    procs = launch([sys.executable, os.path.abspath(__file__), str(two)], processes=2, devices=2)
    try:
        monkeypatch.setenv(distributed.SWITCH, "off")
        worker(str(one), num_devices=4)  # while the two compile
    finally:
        outputs = wait_all(procs)
    assert "process 1/2 (JAX_* variables): 2 local devices, 4 global devices" in outputs[1]

    ref, got = jsonl(one / "metrics.jsonl"), jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3]  # once, not once per process
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], atol=1e-6)
    assert_same_params(one / "model", two / "model")
    assert len(os.listdir(two / "tensorboard")) == 1

    hosts = [json.loads((two / f"process{i}.json").read_text()) for i in range(2)]
    assert [h["n"] for h in hosts] == [2, 2]
    assert hosts[0]["rows"] + hosts[1]["rows"] == list(range(B))  # disjoint halves, in order
    assert all(s == [B // 2, 6] for h in hosts for s in h["local_shapes"])
    assert json.loads((one / "process0.json").read_text())["rows"] == list(range(B))


@pytest.mark.slow
def test_entry_point_two_processes(tmp_path):
    """`python -m gkd_jax.train` on the arith smoke config (shipped teacher and student): two
    processes, stopped after 2 steps and resumed, against one process run through: same
    metrics and parameters, every file written once. The mesh puts "fsdp" across the two
    hosts ("tensor" within each): parameters, optimizer state and checkpoints are sharded over
    processes, batch rows split between them. A few minutes."""
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = [
        sys.executable, "-m", "gkd_jax.train", "--config=configs/arith.py:smoke",
        "--config.teacher.checkpoint=builtin:arith/teacher",
        "--config.init.checkpoint=builtin:arith/student_sft",
        "--config.steps=3", "--config.log_every=1", "--config.checkpoint.every_steps=2",
        "--config.eval.num_examples=8", "--config.eval.batch_size=8",
        "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
    ]  # fmt: skip
    procs = launch([*cmd, f"--workdir={one}"], processes=1, devices=4)
    stop = ["--config.stop_after_steps=2"]
    procs += launch([*cmd, *stop, f"--workdir={two}"], processes=2, devices=2)
    first = wait_all(procs)[1:]
    assert "stopped (config.stop_after_steps=2) at step 2" in first[0]
    assert [r["step"] for r in jsonl(two / "metrics.jsonl")] == [1, 2]
    resumed = wait_all(launch([*cmd, f"--workdir={two}"], processes=2, devices=2))

    ref, got = jsonl(one / "metrics.jsonl"), jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3]
    for key in ("loss", "grad_norm", "loss_tokens", "on_policy"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], atol=1e-6)
    assert_same_params(one / "model", two / "model")
    ref_scores = json.loads((one / "results.json").read_text())["scores"]
    assert json.loads((two / "results.json").read_text())["scores"] == ref_scores
    assert len(os.listdir(two / "tensorboard")) == 2  # one per run, not per process
    assert sorted(os.listdir(two / "checkpoints")) == ["2", "3"]
    assert "resuming from step 2" in resumed[0] and "| student (after) |" in resumed[0]
    assert "| student (after) |" not in resumed[1] and "process 1/2" in resumed[1]


@pytest.mark.slow
def test_rl_run_two_processes_like_one(tmp_path):
    """The policy-gradient loop (rl.alpha 0.5, exact-answer reward, 4 samples a prompt) on two
    processes x 2 devices, against one process x 4: each host scores the rewards of its own
    rows, and the run is the same (metrics and parameters). A few minutes."""
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = [
        sys.executable, "-m", "gkd_jax.train", "--config=configs/arith.py:smoke",
        "--config.teacher.checkpoint=builtin:arith/teacher",
        "--config.init.checkpoint=builtin:arith/student_sft",
        "--config.steps=3", "--config.log_every=1", "--config.export.hf=False",
        "--config.eval.num_examples=8", "--config.eval.batch_size=8",
        "--config.rl.alpha=0.5", "--config.rl.reward=exact_answer",
    ]  # fmt: skip
    procs = launch([*cmd, f"--workdir={one}"], processes=1, devices=4)
    procs += launch([*cmd, f"--workdir={two}"], processes=2, devices=2)
    wait_all(procs)
    ref, got = jsonl(one / "metrics.jsonl"), jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for key in ("loss", "reward", "reward_positive", "divergence", "kl_to_start"):
        rows = [(r[key], q[key]) for r, q in zip(ref, got, strict=True) if key in r]
        assert len(rows) == 3
        np.testing.assert_allclose(*zip(*rows, strict=True), atol=1e-6)
    assert_same_params(one / "model", two / "model")


# ---------------------------------------------------------------------------- in-process
@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(distributed, "_initialized", False)
    for k in [*distributed.EXPLICIT_VARS, distributed.SWITCH, "KUBERNETES_SERVICE_HOST"]:
        monkeypatch.delenv(k, raising=False)
    for k in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_"))]:
        monkeypatch.delenv(k)
    return distributed


@pytest.mark.parametrize(
    "env,match",
    [
        ({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID not set"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "must be integers",
        ),
        ({"GKD_DISTRIBUTED": "yes"}, "GKD_DISTRIBUTED='yes'"),
    ],
)
def test_bad_environment_is_named(fresh, monkeypatch, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        fresh.initialize_from_env()


def test_single_process_is_a_no_op(fresh):
    assert fresh.initialize_from_env() is False
    assert fresh.initialize_from_env() is False  # idempotent
    assert not jax.distributed.is_initialized()
    assert fresh.is_main_process() and fresh.any_process(True) and not fresh.any_process(False)


@pytest.mark.parametrize("tasks,found", [("1", None), ("4", "SlurmCluster")])
def test_slurm_is_detected_by_jax(fresh, monkeypatch, tasks, found):
    """One Slurm task is a plain run; several make a multi-process one (jax's own detection)."""
    slurm = dict(
        SLURM_JOB_ID="7", SLURM_STEP_NODELIST="gpu[01-04]", SLURM_NTASKS=tasks, SLURM_PROCID="0",
        SLURM_LOCALID="0",
    )  # fmt: skip
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert fresh.detected_cluster() == found


def test_host_rows_and_batches_split_a_batch(fresh):
    """One process holds every row; per-host row sets taken from `batches` rebuild its batch."""
    rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    np.testing.assert_array_equal(fresh.host_rows(16, rows), np.arange(16))
    data = {"x": np.arange(40) * 10}
    whole = pipeline.batches(data, 16, seed=3, start=1)
    halves = [pipeline.batches(data, 16, seed=3, start=1, rows=np.arange(h, h + 8)) for h in (0, 8)]
    for _ in range(4):  # across an epoch boundary (2 batches per epoch)
        parts = [next(h)["x"] for h in halves]
        np.testing.assert_array_equal(np.concatenate(parts), next(whole)["x"])


# ---------------------------------------------------------------------------- launch scripts
def test_tpu_vm_script_dry_run():
    """DRY_RUN=1 prints the gcloud commands: every worker starts the same training command."""
    env = dict(os.environ, DRY_RUN="1", TPU_NAME="t1", ZONE="z1", ACCELERATOR_TYPE="v5p-16")
    script = os.path.join(REPO, "launch", "tpu_vm.sh")

    def dry(*args):
        out = subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "tpu-vm create t1 --zone=z1 --accelerator-type=v5p-16" in dry("create")
    assert "tpu-vm delete t1 --zone=z1 --quiet" in dry("delete")
    run = dry("run", "--config=configs/arith.py", "--workdir=/mnt/x")
    assert "tpu-vm ssh t1 --zone=z1 --worker=all" in run
    assert r"python3\ -m\ gkd_jax.train\ --config=configs/arith.py\ --workdir=/mnt/x" in run
    assert subprocess.run([script, "bogus"], env=env, capture_output=True).returncode == 2


def test_gpu_cluster_script_parses():
    sbatch = os.path.join(REPO, "launch", "gpu_cluster.sbatch")
    assert subprocess.run(["bash", "-n", sbatch], timeout=30).returncode == 0


if __name__ == "__main__":
    distributed.initialize_from_env()  # before anything touches a device
    worker(sys.argv[1], num_devices=4)
