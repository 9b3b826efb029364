"""Hugging Face checkpoints read slice by slice: `load_pretrained(..., mesh=...)` gives exactly the
whole-tensor load's parameters, in their shardings, and copies out of the files only the slices
the process's devices hold (counted through SafetensorsReader.get_slice), here on 8 fake devices
and across two processes of 4.

Run as a script, this file is the two-process worker: `python tests/test_safetensors_slices.py
CHECKPOINT OUT_DIR`.
"""

import json
import os
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from gkd_jax.models import DecoderConfig, build_decoder, hf_decoder, hf_t5
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.safetensors_io import SafetensorsReader, write_safetensors
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import distributed, sharding

QWEN2 = DecoderConfig(64, 16, 2, 4, 2, 32, tie_embeddings=False, qkv_bias=True, model_type="qwen2")
LLAMA_TIED = DecoderConfig(64, 16, 1, 4, 2, 32, tie_embeddings=True)
T5_GATED = T5Config(64, 16, 4, 32, 1, 4, gated=True, activation="gelu_tanh", tie_embeddings=False)
T5_TIED = T5Config(64, 16, 4, 32, 1, 4, tie_embeddings=True)
CONFIGS = {"qwen2": QWEN2, "llama_tied": LLAMA_TIED, "t5_gated": T5_GATED, "t5_tied": T5_TIED}
MESHES = {"fsdp8": (1, 8, 1), "fsdp4_tensor2": (1, 4, 2), "data4_tensor2": (4, 1, 2)}


def save_checkpoint(path, cfg, dtype="float32", seed=0) -> str:
    model = build_decoder(cfg, seed=seed) if isinstance(cfg, DecoderConfig) else None
    if model is None:
        model = hf_t5.build(cfg, rngs=nnx.Rngs(seed))
    save_pretrained(model, str(path), dtype=dtype)
    return str(path)


def family(cfg):
    return hf_decoder if isinstance(cfg, DecoderConfig) else hf_t5


def whole_tensor_params(path, cfg) -> dict:
    """The whole-tensor path: every HF tensor read whole, renamed and transposed (float32)."""
    reader = SafetensorsReader(path)
    return family(cfg).params_from_hf(cfg, reader.get, reader.names)


def by_path(tree) -> dict:
    return {sharding.path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def count_reads(monkeypatch) -> list[tuple[str, int, int]]:
    """(tensor, bytes copied out of the file, the tensor's bytes) per get_slice call."""
    calls = []
    original = SafetensorsReader.get_slice

    def counted(self, name, index):
        out = original(self, name, index)
        calls.append((name, out.nbytes, self.get(name).nbytes))
        return out

    monkeypatch.setattr(SafetensorsReader, "get_slice", counted)
    return calls


@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("cfg_name", CONFIGS)
def test_sharded_load_equals_the_whole_tensor_load(tmp_path, cfg_name, mesh_name):
    cfg = CONFIGS[cfg_name]
    path = save_checkpoint(tmp_path, cfg)
    mesh = sharding.make_mesh(*MESHES[mesh_name])
    loaded = nnx.to_pure_dict(nnx.state(load_pretrained(path, mesh=mesh), nnx.Param))
    want = by_path(whole_tensor_params(path, cfg))
    got = by_path(loaded)
    assert set(got) == set(want)
    for key, x in got.items():
        assert x.sharding.spec == sharding.spec_for(key, x.shape, mesh), key
        np.testing.assert_array_equal(np.asarray(x), want[key], err_msg=key)


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_sharded_load_casts_like_the_whole_tensor_load(tmp_path, stored):
    """bfloat16 parameters from float32 or bfloat16 files, as the unsharded load casts them."""
    path = save_checkpoint(tmp_path, QWEN2, dtype=stored)
    mesh = sharding.make_mesh(1, 4, 2)
    loaded = load_pretrained(path, mesh=mesh, param_dtype=ml_dtypes.bfloat16)
    plain = load_pretrained(path, param_dtype=ml_dtypes.bfloat16)
    got, want = (by_path(nnx.to_pure_dict(nnx.state(m, nnx.Param))) for m in (loaded, plain))
    for key, x in got.items():
        assert x.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want[key]), err_msg=key)


@pytest.mark.parametrize("mesh_name", ["fsdp8", "data4_tensor2"])
def test_only_each_devices_slice_is_read(tmp_path, monkeypatch, mesh_name):
    """fsdp=8: every 2-D tensor is read as 8 requests of an eighth; data=4 x tensor=2: as 2
    halves, each read once although four devices hold it. Either way the bytes copied out of
    the files add up to the checkpoint, once: no tensor is read whole and sliced after."""
    path = save_checkpoint(tmp_path, QWEN2)
    reader = SafetensorsReader(path)
    total = sum(reader.get(n).nbytes for n in reader.names)
    calls = count_reads(monkeypatch)
    load_pretrained(path, mesh=sharding.make_mesh(*MESHES[mesh_name]))
    parts = 8 if mesh_name == "fsdp8" else 2
    for name, nbytes, tensor_bytes in calls:
        if reader.get(name).ndim == 2:
            assert nbytes * parts == tensor_bytes, name
    assert sum(nbytes for _, nbytes, _ in calls) == total


def test_a_differing_tied_head_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, T5_TIED)
    reader = SafetensorsReader(path)
    tensors = {n: np.array(reader.get(n)) for n in reader.names}
    tensors["lm_head.weight"] = tensors["shared.weight"].copy()
    write_safetensors(str(tmp_path / "same"), tensors)
    tensors["lm_head.weight"][-1, 0] += 1
    write_safetensors(str(tmp_path / "other"), tensors)
    for name in ("same", "other"):
        os.link(os.path.join(path, "config.json"), tmp_path / name / "config.json")
    load_pretrained(str(tmp_path / "same"), mesh=sharding.make_mesh(1, 8, 1))
    with pytest.raises(ValueError, match="differs from the embedding"):
        load_pretrained(str(tmp_path / "other"), mesh=sharding.make_mesh(1, 8, 1))


# ---------------------------------------------------------------- two processes
def worker(checkpoint: str, out: str) -> None:
    """Load `checkpoint` on an fsdp=8 mesh over both processes' devices; write the bytes each
    tensor cost this process and whether every local shard equals the whole-tensor load's."""
    calls = []
    original = SafetensorsReader.get_slice

    def counted(self, name, index):
        result = original(self, name, index)
        calls.append((name, result.nbytes))
        return result

    SafetensorsReader.get_slice = counted
    model = load_pretrained(checkpoint, mesh=sharding.make_mesh(1, 8, 1))
    SafetensorsReader.get_slice = original
    want = by_path(whole_tensor_params(checkpoint, QWEN2))
    mismatched = []
    for key, x in by_path(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items():
        for shard in x.addressable_shards:
            if not np.array_equal(np.asarray(shard.data), want[key][shard.index]):
                mismatched.append(key)
    read: dict[str, int] = {}
    for name, nbytes in calls:
        read[name] = read.get(name, 0) + nbytes
    with open(os.path.join(out, f"process{jax.process_index()}.json"), "w") as f:
        json.dump({"read": read, "mismatched": mismatched, "local": jax.local_device_count()}, f)


@pytest.mark.slow  # two coordinated child processes (~12 s)
def test_each_of_two_processes_reads_its_half(tmp_path):
    from test_multihost import launch, wait_all

    path = save_checkpoint(tmp_path / "ckpt", QWEN2)
    cmd = [sys.executable, os.path.abspath(__file__), path, str(tmp_path)]
    wait_all(launch(cmd, processes=2, devices=4))
    reader = SafetensorsReader(path)
    for i in range(2):
        seen = json.loads((tmp_path / f"process{i}.json").read_text())
        assert seen["local"] == 4 and seen["mismatched"] == []
        want = {n: reader.get(n).nbytes // (2 if reader.get(n).ndim == 2 else 1)
                for n in reader.names}  # fmt: skip
        assert seen["read"] == want


if __name__ == "__main__":
    distributed.initialize_from_env()  # before anything touches a device
    worker(sys.argv[1], sys.argv[2])
