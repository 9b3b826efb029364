"""A teacher cache on disk: the teacher's top-K + tail (sparse_teacher.py) on a dataset's
training targets, in npz shards beside a manifest. Written by `python -m gkd_jax.teacher_cache`,
read by the trainer with config.gkd.teacher_cache=DIR (the teacher is then never loaded).

    DIR/manifest.json        what the cache holds and what it was made from (below)
    DIR/shard-00000.npz ...  examples [i * shard_size, (i + 1) * shard_size) of the packed
                             training data (pipeline.pack_split's order), with arrays
                               teacher_ids       [n, C, K] int32
                               teacher_logp      [n, C, K] float32 or bfloat16 (stored as
                                                 uint16 bits: npz has no bfloat16)
                               teacher_log_tail  [n, C] float32
                             C = config.max_new_tokens. Padded completion positions hold what
                             the teacher gives there; the completion mask ignores them.

npz (numpy's own format) rather than array_record: array_record is not a dependency of
gkd_jax. A shard appears under its final name only once complete (written to a temporary name,
then renamed), so an interrupted run is resumed by rerunning the same command: the shards
present are kept.

Bytes per completion token: K * (4 + b) + 4, b = 4 (float32) or 2 (bfloat16) log-probs; K = 64:
516 B or 388 B, against 607,744 B (float32) / 303,872 B (bfloat16) for full logits at
V = 151,936. The trainer holds the whole cache in host memory (N x C x that).

The manifest's checks, made when the trainer opens a cache:
  config_hash  sha256 of `cache_key(config)`: the teacher source, compute dtype, temperatures
               and K (a different teacher or loss temperature would give other log-probs);
  data_hash    sha256 of the packed training arrays the cache was computed on (prompt,
               completion and masks): a different dataset, tokenizer or length limit fails;
  k, vocab     the top-K size and the shared vocabulary the ids index.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections
import ml_dtypes  # a dependency of jax: numpy's bfloat16
import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1
ARRAYS = ("teacher_ids", "teacher_logp", "teacher_log_tail")  # = step.TEACHER_KEYS
DATA_KEYS = ("prompt", "prompt_mask", "completion", "completion_mask")
LOGP_DTYPES = ("float32", "bfloat16")


def cache_key(config: ml_collections.ConfigDict) -> dict:
    """The config fields that decide the teacher's log-probabilities on given data."""
    g = config.gkd
    teacher = config.teacher.to_dict()
    # teacher.tokenizer came later (cross-tokenizer runs, which use no cache): left out while it
    # is "", caches made before it keep their hash.
    if not teacher.get("tokenizer"):
        teacher.pop("tokenizer", None)
    if teacher["checkpoint"]:  # the recipe only makes a missing WORKDIR/teacher model
        teacher.pop("recipe", None)
    else:  # by file name: the same recipe from another checkout is the same teacher
        teacher["recipe"] = os.path.basename(teacher["recipe"])
    return {
        "teacher": teacher,
        "dtype": config.dtype,
        "teacher_temperature": float(g.teacher_temperature),
        "loss_temperature": float(g.loss_temperature),
        "teacher_top_k": int(g.teacher_top_k),
    }


def config_hash(config: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(cache_key(config), sort_keys=True).encode()).hexdigest()


def data_hash(data: dict[str, np.ndarray]) -> str:
    """sha256 of the packed training arrays (their dtypes, shapes and bytes, in DATA_KEYS order)."""
    h = hashlib.sha256()
    for key in DATA_KEYS:
        a = np.ascontiguousarray(data[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npz"


def make_command(directory: str) -> str:
    return f"python -m gkd_jax.teacher_cache --config=CONFIG --out={directory}"


def read_manifest(directory: str) -> dict:
    """DIR/manifest.json, or an error naming the directory and the command that makes it."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.isdir(directory) else f"has no {MANIFEST}"
        raise ValueError(
            f"config.gkd.teacher_cache={directory!r} {what}: make the cache first with "
            f"`{make_command(directory)}` (the same config), or set gkd.teacher_cache=''"
        )
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def write_manifest(directory: str, manifest: dict) -> None:
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(directory, MANIFEST))


def check_matches(manifest: dict, config, data: dict[str, np.ndarray], vocab: int, where: str):
    """Raise unless the cache at `where` was made for this config, data and vocabulary."""
    fix = f"rebuild it with `{make_command(where)}` for this config, or use another --out"
    if manifest["k"] != config.gkd.teacher_top_k:
        raise ValueError(
            f"teacher cache {where} holds K={manifest['k']}, config.gkd.teacher_top_k="
            f"{config.gkd.teacher_top_k}: set teacher_top_k={manifest['k']}, or {fix}"
        )
    if manifest["config_hash"] != config_hash(config):
        ours = cache_key(config)
        differ = sorted(k for k in ours if manifest["config_key"].get(k) != ours[k])
        raise ValueError(
            f"teacher cache {where} was made with other teacher settings ({', '.join(differ)} "
            f"differ: cache {[manifest['config_key'].get(k) for k in differ]}, config "
            f"{[ours[k] for k in differ]}): {fix}"
        )
    if manifest["data_hash"] != data_hash(data):
        raise ValueError(
            f"teacher cache {where} was computed on other training data ({manifest['num_examples']}"
            f" examples, hash {manifest['data_hash'][:12]}; this config's data: "
            f"{len(data['prompt'])} examples, hash {data_hash(data)[:12]}): same task, data.* "
            f"fields, tokenizer, max_new_tokens and seed are needed, or {fix}"
        )
    if manifest["vocab"] != vocab:
        raise ValueError(
            f"teacher cache {where} indexes a vocabulary of {manifest['vocab']} ids, this run's "
            f"student has {vocab}: {fix}"
        )


def to_stored(logp: np.ndarray, dtype: str) -> np.ndarray:
    """float32 log-probs as stored: float32, or bfloat16's bits as uint16 (round to nearest)."""
    logp = np.asarray(logp, np.float32)
    if dtype == "float32":
        return logp
    return logp.astype(ml_dtypes.bfloat16).view(np.uint16)


def from_stored(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return stored
    return stored.view(ml_dtypes.bfloat16)


def write_shard(directory: str, i: int, arrays: dict[str, np.ndarray], dtype: str) -> None:
    """Shard i, atomically: under its final name only once completely written."""
    arrays = dict(arrays, teacher_logp=to_stored(arrays["teacher_logp"], dtype))
    tmp = os.path.join(directory, f".{shard_name(i)}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(directory, shard_name(i)))


def read(directory: str, config, data: dict[str, np.ndarray], vocab: int) -> dict[str, np.ndarray]:
    """The cached arrays ARRAYS, row for row with `data` (the packed training set), checked
    against the config, data and vocabulary; log-probs as stored (float32 or bfloat16)."""
    manifest = read_manifest(directory)
    if not manifest.get("complete"):
        done = sum(os.path.exists(os.path.join(directory, shard_name(i))) for i in range(
            manifest["num_shards"]
        ))  # fmt: skip
        raise ValueError(
            f"teacher cache {directory} is incomplete ({done} of {manifest['num_shards']} "
            f"shards): rerun `{make_command(directory)}` to finish it"
        )
    check_matches(manifest, config, data, vocab, directory)
    parts = {key: [] for key in ARRAYS}
    for i in range(manifest["num_shards"]):
        with np.load(os.path.join(directory, shard_name(i))) as shard:
            for key in ARRAYS:
                parts[key].append(shard[key])
    out = {key: np.concatenate(parts[key]) for key in ARRAYS}
    out["teacher_logp"] = from_stored(out["teacher_logp"], manifest["logp_dtype"])
    for key in ARRAYS:
        if list(out[key].shape) != manifest["shapes"][key]:
            raise ValueError(
                f"teacher cache {directory}: {key} has shape {list(out[key].shape)}, the manifest "
                f"says {manifest['shapes'][key]}: the shards are damaged; rebuild the cache"
            )
    ids = out["teacher_ids"]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"teacher cache {directory}: ids outside [0, {vocab}); rebuild it")
    return out
