"""The training loop and what it runs: the jitted steps, the optimizer and schedules, checkpoints,
preemption, metrics logging, the teacher cache on disk."""
