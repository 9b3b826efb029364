"""Read a sharded safetensors checkpoint whole or one device's slice of each tensor: our reader
(gkd_jax/models/safetensors_io.py, numpy over a memory map) vs the `safetensors` package's
`safe_open` (get_tensor / get_slice); then load it onto an fsdp mesh of fake CPU devices, the
whole-tensor way and slice by slice. Prints one JSON line per run and a summary line.

    python benchmarks/safetensors_read.py [--layers 8] [--dtype bfloat16] [--repeats 3] [--keep]
        [--only read|load]

The checkpoint is made here: Llama-like names and shapes (TinyLlama's widths: hidden 2048, MLP
5632, 32 query / 4 key-value heads of 64, vocabulary 32,000, untied head), random values,
922 MiB in bfloat16 at 8 layers, over 5 files with a model.safetensors.index.json and a
config.json, written to --dir (deleted afterwards unless --keep); the load variants were run on
--layers 1 (334 MiB), since the old two-process load needs ~13x the checkpoint per process.
Each variant runs in a fresh subprocess, after the files were read once (the page cache is
warm, so this measures copying, not the disk):

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

The load variants run `load_pretrained`'s two ways of placing the checkpoint on a mesh with
fsdp over every device and bfloat16 parameters (on CPU "device" memory is the process's own:
the placed model, 1/processes of the checkpoint, is in every number):

- load_whole: the loader before slices (and still `params_from_hf`): every tensor read whole into
  one float32 tree, then each parameter `jax.device_put` to its sharding; 1 process x 8 devices.
- load_sliced: `load_pretrained(..., mesh=...)`, each device's slice read from the file
  (`jax.make_array_from_callback`); 1 process x 8 devices.
- load_whole_2proc / load_sliced_2proc: the same on 2 processes x 4 devices joined over
  127.0.0.1 (two "hosts"); the numbers are the larger process's.

Peaks here are sampled every 2 ms by a thread; anon_before_mib is the process's anonymous memory
before the load (jax and its devices): the load's own share is peak_anon_mib - anon_before_mib.
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

READ_VARIANTS = ("full_ours", "full_st", "rows_ours", "rows_st", "cols_ours", "cols_st")
LOAD_VARIANTS = ("load_whole", "load_sliced", "load_whole_2proc", "load_sliced_2proc")
VARIANTS = READ_VARIANTS + LOAD_VARIANTS
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
    del tensors
    from gkd_jax.models import DecoderConfig, hf_decoder

    cfg = DecoderConfig(32000, 2048, layers, 32, 4, 5632, tie_embeddings=False)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_decoder.config_to_hf(cfg), f)
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


class PeakSampler:
    """Peak RssAnon / RssFile of this process, sampled every 2 ms by a thread."""

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.002):
            now = status_kib()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def load_worker(path: str, variant: str) -> dict:
    """Place the checkpoint on an fsdp mesh over every device (all processes'), bfloat16."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gkd_jax.models import hf_decoder
    from gkd_jax.models.hf import build_model, load_pretrained, read_hf_config
    from gkd_jax.models.safetensors_io import SafetensorsReader
    from gkd_jax.parallel import distributed, sharding

    distributed.initialize_from_env()
    mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1)
    before = status_kib()["RssAnon"]  # jax and the devices, before the checkpoint
    sampler = PeakSampler()
    t0 = time.perf_counter()
    if variant.startswith("load_whole"):  # the loader before slices
        cfg = hf_decoder.config_from_hf(read_hf_config(path))
        model = nnx.eval_shape(lambda: build_model(cfg, param_dtype=jnp.bfloat16))
        abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        reader = SafetensorsReader(path)
        loaded = hf_decoder.params_from_hf(cfg, reader.get, reader.names)
        targets = sharding.tree_shardings(abstract, mesh)
        placed = jax.tree.map(
            lambda x, a, s: jax.device_put(np.asarray(x, a.dtype), s), loaded, abstract, targets
        )
    else:
        placed = nnx.state(load_pretrained(path, param_dtype=jnp.bfloat16, mesh=mesh), nnx.Param)
    jax.block_until_ready(jax.tree.leaves(placed))
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    return {
        "variant": variant,
        "process": jax.process_index(),
        "local_devices": jax.local_device_count(),
        "seconds": round(seconds, 3),
        "vmhwm_mib": round(status_kib()["VmHWM"] / 1024, 1),
        "peak_anon_mib": round(peak["RssAnon"] / 1024, 1),
        "anon_before_mib": round(before / 1024, 1),
        "peak_file_mib": round(peak["RssFile"] / 1024, 1),
    }


def run_load(path: str, variant: str) -> dict:
    """One load variant in fresh processes (2 joined over 127.0.0.1 for *_2proc); the larger
    process's numbers."""
    import socket

    processes = 2 if variant.endswith("2proc") else 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env |= {"JAX_PLATFORMS": "cpu", "GKD_DISTRIBUTED": "off" if processes == 1 else "auto",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}  # fmt: skip
    if processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{sock.getsockname()[1]}"
        env["JAX_NUM_PROCESSES"] = str(processes)
    cmd = [sys.executable, __file__, "--worker", variant, "--dir", path]
    procs = [
        subprocess.Popen(cmd, env=env | {"JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE)
        for i in range(processes)
    ]
    outs = [p.communicate()[0].decode() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{variant} failed: {outs}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    worst = max(results, key=lambda r: r["vmhwm_mib"])
    return worst | {"seconds": max(r["seconds"] for r in results)}


def summarize(runs: dict[str, list[dict]]) -> dict:
    for rs in runs.values():
        for r in rs:
            if "anon_before_mib" in r:
                r["load_anon_mib"] = round(r["peak_anon_mib"] - r["anon_before_mib"], 1)
    skip = ("variant", "process")
    medians = {
        v: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in skip}
        for v, rs in runs.items()
    }

    def ratio(a, b, key="seconds", digits=2):
        if a in medians and b in medians:
            return round(medians[a][key] / medians[b][key], digits)
        return None

    ratios = {f"{how}_st_over_ours_seconds": ratio(f"{how}_st", f"{how}_ours")
              for how in ("full", "rows", "cols")}  # fmt: skip
    ratios |= {
        f"{how}_{lib}_slice_over_full_seconds": ratio(f"{how}_{lib}", f"full_{lib}", digits=3)
        for how in ("rows", "cols")
        for lib in ("ours", "st")
    }
    for suffix in ("", "_2proc"):
        for key in ("seconds", "vmhwm_mib", "peak_anon_mib", "load_anon_mib"):
            ratios[f"load_whole{suffix}_over_sliced_{key}"] = ratio(
                f"load_whole{suffix}", f"load_sliced{suffix}", key
            )
    return {"medians": medians, "ratios": {k: v for k, v in ratios.items() if v is not None}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/gkd-safetensors-bench")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["read", "load"])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--worker", choices=VARIANTS)
    args = parser.parse_args()
    if args.worker:
        work = load_worker if args.worker in LOAD_VARIANTS else worker
        print(json.dumps(work(args.dir, args.worker)), flush=True)
        return
    variants = {"read": READ_VARIANTS, "load": LOAD_VARIANTS, None: VARIANTS}[args.only]
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
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant in variants:
                if variant in LOAD_VARIANTS:
                    result = run_load(args.dir, variant)
                else:
                    cmd = [sys.executable, __file__, "--worker", variant, "--dir", args.dir]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                print(json.dumps(result), flush=True)
                runs[variant].append(result)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    summary = {"summary": "medians", "repeats": args.repeats} | summarize(runs)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
