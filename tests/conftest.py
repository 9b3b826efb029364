"""Eight fake CPU devices for every test, so sharded code paths run here as on a TPU host."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

try:  # torch is the parity reference; its intra-op threads fight XLA's for 2 cores otherwise
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass
