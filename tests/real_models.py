"""The real pretrained models the `real` tests run on: SmolLM2-135M-Instruct and Gemma 3 270M as
Hugging Face directories, built once by ../shared/bench/make_real_models.py and cached.

Where: $GKD_REAL_MODELS, else ~/.cache/real-models. When a model is missing there, the builder
(beside the repository, in ../shared/bench) makes it (~2 min, ~1.6 GB, pip installs the GGUF
packages); two pytest workers wait on one lock rather than build twice. A clone without the
builder and without the cache skips these tests, saying why.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDER = os.path.join(os.path.dirname(ROOT), "shared", "bench", "make_real_models.py")
CACHE = os.environ.get("GKD_REAL_MODELS") or os.path.expanduser("~/.cache/real-models")
DIRS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma-3-270m"}


def real_model_dir(name: str) -> str:
    """The model's directory, built first if it is missing; pytest.skip when it cannot be."""
    path = os.path.join(CACHE, DIRS[name])
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    if not os.path.exists(BUILDER):
        pytest.skip(
            f"no real model at {path} and no builder at {BUILDER}: set GKD_REAL_MODELS to a "
            "directory made by make_real_models.py"
        )
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker may be building it right now
        if not os.path.exists(os.path.join(path, "model.safetensors")):
            cmd = [sys.executable, BUILDER, "--out", CACHE, "--only", name]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                pytest.fail(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return path
