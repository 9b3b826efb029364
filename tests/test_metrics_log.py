"""The metrics writers behind `MetricsLog.write(step, scalars)`: W&B (offline) beside
metrics.jsonl, and a resumed run continuing the same W&B run. (metrics.jsonl and TensorBoard
across a resume: tests/test_resume.py.)"""

import glob
import json
import os

import pytest

from gkd_jax.training.metrics_log import WANDB_RUN_ID, MetricsLog


@pytest.fixture
def offline_wandb(monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb


def test_wandb_run_is_resumed_from_the_workdir(tmp_path, offline_wandb):
    workdir = str(tmp_path)
    with MetricsLog(workdir, 0, wandb_project="gkd-test", config={"seed": 0}) as log:
        log.write(0, {"eval/accuracy": 0.25})
        log.write(2, {"train/loss": 0.5, "train/grad_norm": 1.0})
        first = log.writers[-1].run.id
    with MetricsLog(workdir, 2, wandb_project="gkd-test") as log:  # resumed at step 2
        log.write(4, {"train/loss": 0.25, "train/grad_norm": 0.5})
        second = log.writers[-1].run.id
    assert first == second == (tmp_path / WANDB_RUN_ID).read_text().strip()
    runs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
    assert len(runs) == 2 and all(f"-{first}" in os.path.basename(r) for r in runs)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 2, "loss": 0.5, "grad_norm": 1.0},
        {"step": 4, "loss": 0.25, "grad_norm": 0.5},
    ]


def test_no_wandb_project_means_no_wandb(tmp_path):
    with MetricsLog(str(tmp_path), 0) as log:
        log.write(1, {"train/loss": 1.0})
    assert not os.path.exists(tmp_path / WANDB_RUN_ID)
    assert not os.path.exists(tmp_path / "wandb")


def test_disabled_log_writes_nothing(tmp_path):
    with MetricsLog(str(tmp_path / "w"), 0, enabled=False, wandb_project="gkd-test") as log:
        log.write(1, {"train/loss": 1.0})
    assert not os.path.exists(tmp_path / "w")
