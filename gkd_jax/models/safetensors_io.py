"""Read and write the safetensors format (single file or sharded with an index) without torch.

The format is 8 bytes of little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes. Reading memory-maps the file, so a tensor costs memory
only when it is asked for: a 7B checkpoint is never held twice, and `get_slice` copies out only
the slice a device holds (hf.py's sharded load reads each host's slices and nothing else).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class SafetensorsReader:
    """`reader.get(name) -> np.ndarray` over every tensor of a model directory (or one file)."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_FILE)
            if os.path.exists(index):
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
                files = {n: os.path.join(path, file) for n, file in weight_map.items()}
            elif os.path.exists(os.path.join(path, SINGLE_FILE)):
                files = None
                path = os.path.join(path, SINGLE_FILE)
            else:
                raise FileNotFoundError(
                    f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; only safetensors checkpoints "
                    "are read (convert a pytorch_model.bin with transformers' save_pretrained)"
                )
        else:
            files = None
        if files is None:
            header, _ = _read_header(path)
            files = dict.fromkeys(header, path)
        self._files = files
        self._open: dict[str, tuple[mmap.mmap, dict, int]] = {}

    @property
    def names(self) -> set[str]:
        return set(self._files)

    def _file(self, path: str):
        if path not in self._open:
            header, start = _read_header(path)
            with open(path, "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._open[path] = (buf, header, start)
        return self._open[path]

    def _entry(self, name: str) -> dict:
        if name not in self._files:
            raise KeyError(f"tensor {name!r} is not in the checkpoint")
        return self._file(self._files[name])[1][name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, from the header (nothing is read)."""
        return tuple(self._entry(name)["shape"])

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of `get(name)[index]`: only the slice's bytes leave the memory map."""
        return np.array(self.get(name)[index])

    def get(self, name: str) -> np.ndarray:
        """The whole tensor, a read-only view of the memory map (copied only when used)."""
        entry = self._entry(name)
        buf, _, start = self._file(self._files[name])
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        flat = np.frombuffer(buf, dtype, (end - begin) // dtype.itemsize, start + begin)
        return flat.reshape(entry["shape"])


def read_param(
    get_slice: Callable[[str, Any], np.ndarray],
    name: str,
    transpose: bool,
    index: tuple[slice, ...] | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """`index` (None: all) of one parameter in our layout, read from HF tensor `name` with
    `get_slice(name, file_index)`: a Linear's [out, in] weight is our [in, out] kernel
    (`transpose`), so the index is reversed for the file and the slice transposed back. Values
    pass through float32, as a whole-tensor load casts them, then become `dtype`."""
    if index is None:
        file_index = ...
    else:
        file_index = tuple(reversed(index)) if transpose else tuple(index)
    x = np.asarray(get_slice(name, file_index)).astype(np.float32, copy=False)
    return np.ascontiguousarray(x.T if transpose else x, dtype=dtype)


def nest(flat: Mapping[tuple, Any]) -> dict:
    """{("layers", 0, "mlp", ...): x} -> {"layers": {0: {"mlp": {...}}}}."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _write_file(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
    offset = 0
    for name, t in tensors.items():
        nbytes = t.nbytes
        header[name] = {
            "dtype": NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t).tobytes())
    os.replace(tmp, path)


def write_safetensors(
    directory: str, tensors: Mapping[str, np.ndarray], *, max_shard_bytes: int = 5 * 2**30
) -> list[str]:
    """Write `tensors` as model.safetensors, or as shards + index past `max_shard_bytes`."""
    os.makedirs(directory, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = np.asarray(tensors[name])
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    for stale in (SINGLE_FILE, INDEX_FILE):
        if os.path.exists(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    if len(shards) == 1:
        _write_file(os.path.join(directory, SINGLE_FILE), shards[0])
        return [SINGLE_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(files, shards, strict=True):
        _write_file(os.path.join(directory, file), shard)
        weight_map |= dict.fromkeys(shard, file)
    total = sum(np.asarray(t).nbytes for t in tensors.values())
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files
