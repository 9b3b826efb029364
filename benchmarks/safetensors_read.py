"""Read a sharded safetensors checkpoint whole or one device's slice of each tensor: our reader
(gkd_jax/models/safetensors_io.py, numpy over a memory map) vs the `safetensors` package's
`safe_open` (get_tensor / get_slice). Prints one JSON line per run and a summary line.

    python benchmarks/safetensors_read.py [--layers 8] [--dtype bfloat16] [--repeats 3] [--keep]

The checkpoint is made here: Llama-like names and shapes (TinyLlama's widths: hidden 2048, MLP
5632, 32 query / 4 key-value heads of 64, vocabulary 32,000, untied head), random values,
~1 GB in bfloat16 over 4 files with a model.safetensors.index.json, written to --dir (deleted
afterwards unless --keep). Each variant runs in a fresh subprocess, after the files were read
once (the page cache is warm, so this measures copying, not the disk):

- full_ours / full_st: every tensor whole (ours: `np.array(reader.get(name))`, a copy out of the
  memory map; safetensors: `safe_open(file, "numpy").get_tensor(name)`).
- rows_ours / rows_st: 1/8 of the rows of every tensor (the first eighth), the slice of an fsdp=8
  shard of a row-split parameter (ours: `reader.get_slice(name, index)`; safetensors:
  `get_slice(name)[index]`).
- cols_ours / cols_st: 1/8 of the columns (1-D tensors: 1/8 of the entries), the slice an fsdp=8
  shard reads of a transposed kernel: strided in the file.

Each run reports the read loop's wall time, the bytes it returned, VmHWM (peak resident set,
memory-mapped file pages included), and the peak anonymous (process-owned) and file-backed
resident memory, sampled after every tensor (/proc/self/status RssAnon, RssFile).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ("full_ours", "full_st", "rows_ours", "rows_st", "cols_ours", "cols_st")
SPLIT = 8


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    d, f, v, kv = 2048, 5632, 32000, 4 * 64
    shapes = {"model.embed_tokens.weight": (v, d), "lm_head.weight": (v, d)}
    shapes["model.norm.weight"] = (d,)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return shapes


def make_checkpoint(path: str, layers: int, dtype: str) -> int:
    import ml_dtypes

    from gkd_jax.models.safetensors_io import write_safetensors

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]
    rng = np.random.default_rng(0)
    tensors = {
        name: rng.random(shape, dtype=np.float32).astype(np_dtype)
        for name, shape in llama_shapes(layers).items()
    }
    total = sum(t.nbytes for t in tensors.values())
    write_safetensors(path, tensors, max_shard_bytes=-(-total // 4))
    return total


def status_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def index_for(shape: tuple[int, ...], how: str) -> tuple[slice, ...]:
    if how == "full":
        return tuple(slice(None) for _ in shape)
    if how == "rows" or len(shape) == 1:
        return (slice(0, shape[0] // SPLIT), *[slice(None)] * (len(shape) - 1))
    return (slice(None), slice(0, shape[1] // SPLIT))


def worker(path: str, variant: str) -> dict:
    how, lib = variant.split("_")
    if lib == "ours":
        from gkd_jax.models.safetensors_io import SafetensorsReader

        reader = SafetensorsReader(path)
        names = sorted(reader.names)

        def read(name):
            index = index_for(reader.shape(name), how)
            if how == "full":
                return np.array(reader.get(name))
            return reader.get_slice(name, index)

    else:
        from safetensors import safe_open

        from gkd_jax.models.safetensors_io import INDEX_FILE

        with open(os.path.join(path, INDEX_FILE)) as f:
            weight_map = json.load(f)["weight_map"]
        handles = {
            file: safe_open(os.path.join(path, file), "numpy") for file in set(weight_map.values())
        }
        names = sorted(weight_map)

        def read(name):
            handle = handles[weight_map[name]]
            if how == "full":
                return handle.get_tensor(name)
            piece = handle.get_slice(name)
            return piece[index_for(tuple(piece.get_shape()), how)]

    peak = {"RssAnon": 0, "RssFile": 0}
    nbytes = 0
    t0 = time.perf_counter()
    for name in names:
        x = read(name)
        nbytes += x.nbytes
        now = status_kib()  # while x is alive
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        del x
    seconds = time.perf_counter() - t0
    return {
        "variant": variant,
        "seconds": round(seconds, 4),
        "bytes_read": nbytes,
        "vmhwm_mib": round(status_kib()["VmHWM"] / 1024, 1),
        "peak_anon_mib": round(peak["RssAnon"] / 1024, 1),
        "peak_file_mib": round(peak["RssFile"] / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/gkd-safetensors-bench")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--worker", choices=VARIANTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.dir, args.worker)), flush=True)
        return
    t = time.perf_counter()
    total = make_checkpoint(args.dir, args.layers, args.dtype)
    files = sorted(os.listdir(args.dir))
    print(json.dumps({"checkpoint_mib": round(total / 2**20, 1), "files": files,
                      "dtype": args.dtype, "written_s": round(time.perf_counter() - t, 1)}),
          flush=True)  # fmt: skip
    try:
        for file in files:  # warm the page cache: every variant then reads from memory
            with open(os.path.join(args.dir, file), "rb") as f:
                while f.read(1 << 24):
                    pass
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--worker", variant, "--dir", args.dir]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                print(json.dumps(result), flush=True)
                runs[variant].append(result)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    medians = {
        v: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "variant"}
        for v, rs in runs.items()
    }
    ratios = {
        f"{how}_st_over_ours_seconds": round(
            medians[f"{how}_st"]["seconds"] / medians[f"{how}_ours"]["seconds"], 2
        )
        for how in ("full", "rows", "cols")
    }
    ratios |= {
        f"{how}_{lib}_slice_over_full_seconds": round(
            medians[f"{how}_{lib}"]["seconds"] / medians[f"full_{lib}"]["seconds"], 3
        )
        for how in ("rows", "cols")
        for lib in ("ours", "st")
    }
    print(json.dumps({"summary": "medians", "repeats": args.repeats, "medians": medians,
                      "ratios": ratios}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
