"""The teacher cache (gkd_jax/training/teacher_cache_build.py, teacher_cache_store.py) on the
shipped arith teacher: it round-trips, resumes an interrupted write, a training run from it equals
one with the
live teacher at the same K, and a cache made for something else is refused by name."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from gkd_jax.config.checks import validate_config
from gkd_jax.config.loading import load_config_file
from gkd_jax.data import pipeline
from gkd_jax.data.tasks import get_task
from gkd_jax.models import functional_lm
from gkd_jax.models.sources import load_or_build_tokenizer, shared_vocab_size
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint, preemption, trainer
from gkd_jax.training import teacher_cache_store as store
from gkd_jax.training.step import Objective
from gkd_jax.training.teacher_cache_build import build_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 8


def arith_config(**gkd):
    """configs/arith.py (the shipped teacher and SFT student), supervised KD (lmbda 0) from
    the teacher's top-8 on 64 training problems, shrunk to seconds."""
    config = load_config_file(os.path.join(REPO, "configs", "arith.py"))
    config.unlock()
    config.update(steps=4, batch_size=16, log_every=1, compare_lmbdas="")
    config.data.train_examples = 64
    config.eval.update(num_examples=16, batch_size=16)
    config.export.hf = False
    config.gkd.update(lmbda=0.0, teacher_top_k=K)
    config.gkd.update(gkd)
    return config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "top8"
    build_cache(arith_config(), str(out), shard_size=32, batch_size=16)
    return out


def computed_top_k(config, workdir):
    """The teacher's top-K of every training example, computed here batch by batch (16 rows,
    as the cache was) with step.Objective, the live step's own function."""
    tokenizer, stops = load_or_build_tokenizer(config, str(workdir))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    student, teacher = trainer.load_models(config, str(workdir), mesh)
    vocab = shared_vocab_size(config, tokenizer, student, teacher)
    _, data, _, _ = trainer.load_data(config, get_task("arith"), tokenizer, stops, vocab)
    objective = Objective(config, functional_lm(student)[1], functional_lm(teacher)[1])
    t_params = functional_lm(teacher)[0]

    @jax.jit
    def summarize(params, batch):
        return objective.teacher_top_k(objective.teacher.score(params, *batch))

    parts = []
    for batch in pipeline.in_order({k: data[k] for k in store.DATA_KEYS}, 16):
        batch.pop("valid")
        parts.append(jax.device_get(summarize(t_params, [batch[k] for k in store.DATA_KEYS])))
    return data, {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(store.ARRAYS)}


def test_cache_round_trips(cache_dir, tmp_path):
    manifest = json.loads((cache_dir / store.MANIFEST).read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["k"] == K
    assert manifest["shapes"]["teacher_ids"] == [64, 48, K]
    assert manifest["bytes_per_token"] == K * 8 + 4
    config = arith_config()
    data, expected = computed_top_k(config, cache_dir / "workdir")
    got = store.read(str(cache_dir), config, data, manifest["vocab"])
    for key in store.ARRAYS:
        assert got[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(got[key], expected[key])
    # Real top-K of a normalized distribution: decreasing, below the mass it leaves.
    assert np.all(np.diff(got["teacher_logp"], axis=-1) <= 0)
    mass = np.exp(got["teacher_logp"]).sum(-1) + np.exp(got["teacher_log_tail"])
    np.testing.assert_allclose(mass, 1.0, rtol=1e-5)
    # bfloat16 storage: the float32 values rounded to nearest, everything else identical.
    bf = tmp_path / "bf16"
    build_cache(config, str(bf), workdir=str(cache_dir / "workdir"), logp_dtype="bfloat16",
                shard_size=64, batch_size=16)  # fmt: skip
    got_bf = store.read(str(bf), config, data, manifest["vocab"])
    assert got_bf["teacher_logp"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        got_bf["teacher_logp"], expected["teacher_logp"].astype(ml_dtypes.bfloat16)
    )
    np.testing.assert_array_equal(got_bf["teacher_ids"], expected["teacher_ids"])


def test_interrupted_write_resumes_keeping_finished_shards(cache_dir, tmp_path, capsys):
    out = tmp_path / "again"
    config = arith_config()
    workdir = str(cache_dir / "workdir")
    build_cache(config, str(out), workdir=workdir, shard_size=32, batch_size=16)
    first = out / store.shard_name(0)
    stamp = first.stat().st_mtime_ns
    os.remove(out / store.shard_name(1))  # as if stopped after shard 0
    manifest = json.loads((out / store.MANIFEST).read_text())
    (out / store.MANIFEST).write_text(json.dumps(manifest | {"complete": False}))
    with pytest.raises(ValueError, match=r"incomplete \(1 of 2 shards\).*rerun"):
        store.read(str(out), config, {}, 0)
    capsys.readouterr()
    build_cache(config, str(out), workdir=workdir, shard_size=32, batch_size=16)
    printed = capsys.readouterr().out
    assert "shard 2/2: 64/64 examples" in printed and "shard 1/2" not in printed
    assert first.stat().st_mtime_ns == stamp
    for i in range(2):
        with np.load(out / store.shard_name(i)) as a, np.load(cache_dir / store.shard_name(i)) as b:
            for key in store.ARRAYS:
                np.testing.assert_array_equal(a[key], b[key])
    # Another K into the same directory: refused, not mixed in.
    with pytest.raises(ValueError, match="holds another teacher cache"):
        build_cache(arith_config(teacher_top_k=4), str(out), workdir=workdir, shard_size=32)


# ---------------------------------------------------------------------------- training from it
def metric_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def final_params(workdir):
    return jax.tree.leaves(nnx.state(checkpoint.load_model(str(workdir / "model")), nnx.Param))


@pytest.fixture(scope="module")
def cached_run(cache_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cached_run")
    trainer.train_and_evaluate(arith_config(teacher_cache=str(cache_dir)), str(workdir))
    return workdir


def test_run_from_the_cache_equals_the_live_teacher(cached_run, tmp_path):
    trainer.train_and_evaluate(arith_config(), str(tmp_path))  # live teacher, same K
    live, cached = metric_rows(tmp_path), metric_rows(cached_run)
    assert [r["step"] for r in cached] == [1, 2, 3, 4]
    for a, b in zip(cached, live, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    for a, b in zip(final_params(cached_run), final_params(tmp_path), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    results = json.loads((cached_run / "results.json").read_text())
    assert "teacher" not in results["scores"]  # the teacher was never loaded


@pytest.mark.slow
def test_run_from_the_cache_resumes_bit_for_bit(cache_dir, cached_run, tmp_path):
    config = arith_config(teacher_cache=str(cache_dir))
    config.stop_after_steps = 2
    with pytest.raises(preemption.Preempted):
        trainer.train_and_evaluate(config, str(tmp_path))
    trainer.train_and_evaluate(arith_config(teacher_cache=str(cache_dir)), str(tmp_path))
    for a, b in zip(final_params(tmp_path), final_params(cached_run), strict=True):
        np.testing.assert_array_equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if "per_s" not in k} for r in rows]  # noqa: E731
    assert strip(metric_rows(tmp_path)) == strip(metric_rows(cached_run))


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(teacher_top_k=4), r"teacher_top_k=4.*cache's K=8.*set gkd.teacher_top_k=8"),
        (dict(lmbda=0.5), r"gkd.lmbda=0.5.*must be 0.*teacher_cache=''"),
        (dict(seq_kd=True), r"gkd.seq_kd=True.*must be False"),
        (dict(loss_impl="chunked"), r"gkd.loss_impl='chunked'.*must be 'full'"),
    ],
)
def test_config_checks_refuse_a_cache_that_cannot_serve(cache_dir, fields, match):
    with pytest.raises(ValueError, match=match):
        validate_config(arith_config(teacher_cache=str(cache_dir), **fields))


def test_missing_cache_dir_names_the_command(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist.*python -m gkd_jax.teacher_cache"):
        validate_config(arith_config(teacher_cache=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"has no manifest.json"):
        validate_config(arith_config(teacher_cache=str(tmp_path)))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(train_examples=48), r"other training data \(64 examples.*48 examples"),
        (dict(teacher_temperature=0.5), r"other teacher settings \(teacher_temperature"),
    ],
)
def test_a_cache_for_other_data_or_teacher_is_refused(cache_dir, tmp_path, change, match):
    config = arith_config(teacher_cache=str(cache_dir))
    if "train_examples" in change:
        config.data.train_examples = change["train_examples"]
    else:
        config.gkd.teacher_temperature = change["teacher_temperature"]
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_cached_batches_carry_the_teacher_rows(cache_dir):
    """The trainer's batches hold each example's own cached rows (shuffled with it)."""
    config = arith_config()
    data, expected = computed_top_k(config, cache_dir / "workdir")
    vocab = json.loads((cache_dir / store.MANIFEST).read_text())["vocab"]
    merged = data | store.read(str(cache_dir), config, data, vocab)
    batch = next(pipeline.batches(merged, 16, seed=3, start=5))
    rows = [int(np.flatnonzero((data["completion"] == c).all(1) & (data["prompt"] == p).all(1))[0])
            for p, c in zip(batch["prompt"], batch["completion"], strict=True)]  # fmt: skip
    np.testing.assert_array_equal(batch["teacher_ids"], expected["teacher_ids"][rows])
    assert jnp.asarray(batch["teacher_logp"]).shape == (16, 48, K)


@pytest.mark.slow
def test_live_top_k_on_policy_run(tmp_path):
    """teacher_top_k with lmbda 1: the student's samples scored by the live teacher's top-8,
    on the 8-device mesh; the evaluation's teacher row is there (the teacher is live)."""
    config = arith_config(lmbda=1.0)
    config.steps = 2
    trainer.train_and_evaluate(config, str(tmp_path))
    rows = metric_rows(tmp_path)
    assert [r["on_policy"] for r in rows] == [1.0, 1.0]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert "teacher" in json.loads((tmp_path / "results.json").read_text())["scores"]


@pytest.mark.slow
def test_command_line_bfloat16_cache_trains_on_the_mesh(tmp_path):
    """`python -m gkd_jax.teacher_cache` as docs/guides/rl_sparse.md runs it (bfloat16 log-probs, a
    partial
    last shard), then two supervised-KD steps from it on the 8-device mesh."""
    out = tmp_path / "cache"
    command = [
        sys.executable, "-m", "gkd_jax.teacher_cache",
        f"--config={os.path.join(REPO, 'configs', 'arith.py')}", f"--out={out}",
        f"--config.gkd.teacher_top_k={K}", "--config.data.train_examples=40",
        "--dtype=bfloat16", "--shard_size=16", "--batch_size=8",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard 3/3: 40/40 examples" in done.stdout
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["logp_dtype"] == "bfloat16" and manifest["bytes_per_token"] == K * 6 + 4
    assert manifest["num_examples"] == 40 and manifest["complete"]
    config = arith_config(teacher_cache=str(out))
    config.data.train_examples, config.steps = 40, 2
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    rows = metric_rows(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
