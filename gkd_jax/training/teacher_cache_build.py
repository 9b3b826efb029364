"""Building a teacher cache (`python -m gkd_jax.teacher_cache`'s work): a teacher's top-K + tail
on a dataset's training targets, computed once, for supervised KD (lmbda 0) without the teacher
in memory.

The teacher scores every training example's prompt + target completion (what supervised KD and
the live step score at lmbda 0), and each completion position keeps its top-K ids (int32), their
log-probabilities (float32, or bfloat16 with --dtype) and the log of the remaining mass
(float32), at the config's gkd.teacher_temperature and gkd.loss_temperature
(sparse_teacher.top_k_log_probs, as step.Objective.teacher_top_k takes them live). Shards and
manifest: teacher_cache_store.py. A progress line per shard; rerunning the same command after
an interruption keeps the shards already written.

Memory per completion token: K * (4 + b) + 4 bytes. K = 64: 516 B (float32 log-probs) or 388 B
(bfloat16), against 607,744 B / 303,872 B for a float32 / bfloat16 row of V = 151,936 logits
(Qwen2.5): ~1,180x / ~780x less. On disk the same (npz, uncompressed).

Models come from the config as the trainer finds them (`--workdir`, default OUT/workdir: where
`checkpoint=""` models live or are made by their recipes); the student is loaded only for the
shared vocabulary size (models/sources.py's shared_vocab_size).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import ml_collections
import numpy as np

from gkd_jax.config.checks import validate_config
from gkd_jax.data import pipeline
from gkd_jax.data.tasks import get_task
from gkd_jax.models import functional_lm
from gkd_jax.models.sources import load_or_build_tokenizer, shared_vocab_size
from gkd_jax.objectives.sparse_teacher import bytes_per_token
from gkd_jax.parallel import sharding
from gkd_jax.parallel.distributed import log
from gkd_jax.training import teacher_cache_store as store
from gkd_jax.training.step import Objective
from gkd_jax.training.trainer import fmt_time, load_data, load_models


def build_cache(
    config: ml_collections.ConfigDict,
    out: str,
    *,
    workdir: str = "",
    logp_dtype: str = "float32",
    shard_size: int = 1024,
    batch_size: int = 0,
) -> dict:
    """Write (or finish) the cache of config's teacher on config's training data into `out`;
    returns its manifest. batch_size 0 = config.eval.batch_size."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.gkd.teacher_cache = ""  # the training config may already name this cache
    batch_size = check_arguments(config, logp_dtype, shard_size, batch_size)
    out = os.path.abspath(out)
    workdir = os.path.abspath(workdir or os.path.join(out, "workdir"))
    os.makedirs(workdir, exist_ok=True)

    tokenizer, stops = load_or_build_tokenizer(config, workdir)
    validate_config(config, vocab_size=len(tokenizer))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    student, teacher = load_models(config, workdir, mesh)
    vocab = shared_vocab_size(config, tokenizer, student, teacher)
    _, data, _, _ = load_data(config, get_task(config.task), tokenizer, stops, vocab)
    _, student_fns = functional_lm(student)
    teacher_params, teacher_fns = functional_lm(teacher)
    del student
    manifest = make_manifest(config, data, vocab, workdir, logp_dtype, shard_size)
    start_or_resume(out, manifest)

    objective = Objective(config, student_fns, teacher_fns, mesh=mesh)
    teacher_params = jax.device_put(teacher_params, sharding.tree_shardings(teacher_params, mesh))

    @jax.jit
    def summarize(params, batch):
        logits = objective.teacher.score(params, *(batch[key] for key in store.DATA_KEYS))
        return objective.teacher_top_k(logits)

    scores = functools.partial(summarize, teacher_params)
    write_shards(out, data, manifest, scores, sharding.batch_sharding(mesh), batch_size)
    manifest["complete"] = True
    store.write_manifest(out, manifest)
    n, length = data["completion"].shape
    size = n * length * manifest["bytes_per_token"]  # every position, padding included
    log(
        f"[teacher_cache] {out}: {n} examples x {length} positions, K={manifest['k']}, "
        f"{manifest['bytes_per_token']} B per position ({logp_dtype} log-probs): "
        f"{size / 2**20:.1f} MiB"
    )
    return manifest


def check_arguments(
    config: ml_collections.ConfigDict, logp_dtype: str, shard_size: int, batch_size: int
) -> int:
    """The teacher batch size (batch_size, or 0 = config.eval.batch_size) once the arguments
    are checked: they fail here, before any model is loaded."""
    k = config.gkd.teacher_top_k
    if config.objective != "gkd" or k < 1:
        raise ValueError(
            f"config.gkd.teacher_top_k={k} (objective {config.objective!r}): the cache needs a "
            "GKD config with K >= 1, e.g. --config.gkd.teacher_top_k=64"
        )
    if logp_dtype not in store.LOGP_DTYPES:
        raise ValueError(f"--dtype={logp_dtype!r}: use one of {store.LOGP_DTYPES}")
    if shard_size < 1:
        raise ValueError(f"--shard_size={shard_size}: must be >= 1")
    batch_size = batch_size or config.eval.batch_size
    if batch_size % jax.device_count():
        raise ValueError(f"--batch_size={batch_size}: must divide by {jax.device_count()} devices")
    return batch_size


def make_manifest(
    config: ml_collections.ConfigDict,
    data: dict[str, np.ndarray],
    vocab: int,
    workdir: str,
    logp_dtype: str,
    shard_size: int,
) -> dict:
    """The cache's manifest (teacher_cache_store.py), not yet complete: what the cache holds,
    and the hashes that tie it to this config and these training rows."""
    k = config.gkd.teacher_top_k
    n, length = data["completion"].shape
    return {
        "format": store.FORMAT,
        "k": k,
        "vocab": vocab,
        "logp_dtype": logp_dtype,
        "config_hash": store.config_hash(config),
        "config_key": store.cache_key(config),
        "data_hash": store.data_hash(data),
        "teacher_source": {
            "checkpoint": config.teacher.checkpoint,
            "recipe": config.teacher.recipe,
            "workdir": workdir,
        },
        "task": config.task,
        "num_examples": n,
        "completion_len": length,
        "completion_tokens": int(data["completion_mask"].sum()),
        "shard_size": shard_size,
        "num_shards": -(-n // shard_size),
        "shapes": {
            "teacher_ids": [n, length, k],
            "teacher_logp": [n, length, k],
            "teacher_log_tail": [n, length],
        },
        "bytes_per_token": bytes_per_token(k, 4 if logp_dtype == "float32" else 2),
        "complete": False,
    }


def start_or_resume(out: str, manifest: dict) -> None:
    """Write the manifest into `out`, made if new; an existing cache there is resumed only
    when it is this one (same K, vocabulary, dtype, config, data and shard size)."""
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, store.MANIFEST)):  # resuming: the same cache only
        old = store.read_manifest(out)
        keys = ("k", "vocab", "logp_dtype", "config_hash", "data_hash", "shard_size")
        differ = [key for key in keys if old[key] != manifest[key]]
        if differ:
            raise ValueError(
                f"{out} holds another teacher cache ({', '.join(differ)} differ): use another "
                "--out, or delete it to rebuild"
            )
    store.write_manifest(out, manifest)


def write_shards(
    out: str,
    data: dict[str, np.ndarray],
    manifest: dict,
    summarize,
    rows: jax.sharding.NamedSharding,
    batch_size: int,
) -> None:
    """Score the shards not yet in `out` with `summarize` (a batch on `rows` -> the teacher's
    ids [b, N, K], log-probs [b, N, K] and log tail [b, N]) and write each, with a progress
    line."""
    n, shard_size = manifest["num_examples"], manifest["shard_size"]
    t_start, tokens_done = time.time(), 0
    for i in range(manifest["num_shards"]):
        lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
        if os.path.exists(os.path.join(out, store.shard_name(i))):
            continue  # written by an earlier, interrupted run
        shard = {key: data[key][lo:hi] for key in store.DATA_KEYS}
        parts = []
        for batch in pipeline.in_order(shard, batch_size):
            valid = batch.pop("valid")  # [b] bool: False on the padding rows of the last batch
            summary = jax.device_get(summarize(jax.device_put(batch, rows)))
            parts.append([np.asarray(a)[valid] for a in summary])
        arrays = {key: np.concatenate([p[j] for p in parts]) for j, key in enumerate(store.ARRAYS)}
        store.write_shard(out, i, arrays, manifest["logp_dtype"])
        tokens_done += int(shard["completion_mask"].sum())
        rate = tokens_done / max(time.time() - t_start, 1e-9)
        left = int(data["completion_mask"][hi:].sum()) / max(rate, 1e-9)
        log(
            f"[teacher_cache] shard {i + 1}/{manifest['num_shards']}: {hi}/{n} examples, "
            f"{rate:,.0f} tokens/s, ETA {fmt_time(left)}"
        )
