"""benchmarks/hardware.sh, the accelerator benchmark's one command, in its CPU --quick mode: our
step's JSON line (positive s/step and tokens/s, the planner's model FLOPs) and TRL's line, run or
skipped; and the peak-FLOPs table that MFU divides by."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import hardware_step  # noqa: E402


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v6 lite", 918e12),
        ("TPU v4", 275e12),
        ("cpu", None),
    ],
)
def test_peak_flops_by_device_kind(kind, peak):
    assert hardware_step.peak_flops(kind) == peak


def test_mfu_is_model_flops_over_time_and_peak():
    args = hardware_step.parse_args(["--batch", "8", "--prompt-len", "512", "--new-tokens", "128"])
    out = hardware_step.line(args, "gkd_jax", "p", 0.5, 989e12 / 4, "NVIDIA H200")
    assert out["mfu"] == 0.5 and out["tokens_per_s"] == 8 * 640 / 0.5
    assert hardware_step.line(args, "gkd_jax", "p", 0.5, 1e12, "cpu")["mfu"] is None


def test_qwen_pair_shapes_are_the_assets():
    student, teacher = hardware_step.pair_configs(hardware_step.QWEN_PAIR)
    assert (student["hidden_size"], teacher["hidden_size"]) == (896, 1536)
    assert student["vocab_size"] == teacher["vocab_size"] == 151936


@pytest.mark.slow  # ~37 s: two child processes (ours, then TRL's side) on the tiny pair
def test_quick_run_prints_our_line_and_trl_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PY=sys.executable, OUT=str(tmp_path))
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "hardware.sh"), "--quick"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(s) for s in r.stdout.splitlines() if s.startswith("{")]
    ours = [x for x in lines if x["impl"] == "gkd_jax"]
    trl = [x for x in lines if x["impl"] == "trl"]
    assert len(ours) == 1 and len(trl) == 1, r.stdout
    (o,) = ours
    assert "error" not in o, o
    assert o["pair"] == "tiny" and o["s_per_step"] > 0 and o["tokens_per_s"] > 0
    assert o["model_flops_per_step"] > 0 and o["mfu"] is None  # a CPU has no peak in the table
    assert len(o["step_times_s"]) == 2 and o["mean_sampled_tokens"] > 0
    (t,) = trl
    assert "skipped" in t or t["s_per_step"] > 0, t
    written = (tmp_path / "hardware.jsonl").read_text().splitlines()
    assert [json.loads(s) for s in written] == lines
