"""The planner (gkd_jax/planning/planner.py): abstract models, the trainer's two programs
compiled for a target, the per-device parts, the bisection, and its errors. On host CPU devices
(cpu:8) the
whole path runs without libtpu; the TPU test runs where jax[tpu] is installed (.[test] and
.[tpu-plan] install it)."""

import dataclasses
import json
import os
import sys

import pytest

from gkd_jax.config.defaults import base_config
from gkd_jax.decoding import sampler_memory
from gkd_jax.parallel import sharding
from gkd_jax.planning import planner as plan
from gkd_jax.planning import search
from gkd_jax.planning import target as plan_target


def tiny_config(**fields):
    c = base_config()  # two 2-layer decoders of 64 units, vocabulary 99
    c.batch_size, c.max_new_tokens, c.data.max_prompt_len = 8, 4, 8
    c.mesh.data, c.mesh.fsdp = 1, -1
    for k, v in fields.items():
        c[k] = v
    return c


def test_unknown_topology_lists_the_known_ones():
    with pytest.raises(ValueError, match="v5e-8.*v5p:2x2x1"):
        plan_target.topology("v7x-8")


def test_cpu_topology_needs_the_devices():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
        plan_target.topology("cpu:64")


def test_a_mesh_that_does_not_divide_the_devices():
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp = -1, 3
    with pytest.raises(ValueError, match="do not divide the 8 devices"):
        plan.Planner(config, plan_target.topology("cpu:8"))


def test_unknown_model_shape_names_the_known_ones():
    with pytest.raises(ValueError, match="qwen2.5-7b"):
        plan.Planner(tiny_config(), plan_target.topology("cpu:8"), student="qwen9-1b")


@pytest.mark.slow
def test_shapes_are_the_published_sizes():
    """Each shipped config.json builds (as shapes) the model of its published size."""
    expected = {  # billions of parameters, as the model cards state them
        "qwen2.5-7b": 7.62, "qwen2.5-1.5b": 1.54, "qwen2.5-0.5b": 0.49, "llama-3.1-8b": 8.03,
        "llama-3.2-1b": 1.24, "gemma-2-9b": 9.24, "gemma-2-2b": 2.61, "flan-t5-xl": 2.85,
        "flan-t5-large": 0.78, "flan-t5-base": 0.25, "flan-t5-small": 0.08,
        # Gemma 3: the text model, without the vision tower (gkd_jax/assets/shapes/README.md)
        "gemma-3-1b": 1.00, "gemma-3-4b": 3.88, "gemma-3-12b": 11.77, "gemma-3-27b": 27.01,
    }  # fmt: skip
    shipped = [d for d in os.listdir(plan.SHAPES) if os.path.isdir(os.path.join(plan.SHAPES, d))]
    assert sorted(expected) == sorted(shipped)
    import jax.numpy as jnp

    for name, billions in expected.items():
        cfg = plan.source_config(name, None)
        model = plan.abstract_model(cfg, dtype=jnp.bfloat16, param_dtype=jnp.float32)
        from gkd_jax.models import functional_lm

        params, _ = functional_lm(model)
        assert round(plan.param_count(params) / 1e9, 2) == billions, name


def test_plan_on_cpu_devices(tmp_path, monkeypatch):
    """Both programs compile for 8 CPU devices; the argument parts add up to what the compiler
    counts; the JSON line carries the figures, and the TPU compiler's flags it was made with."""
    out = tmp_path / "plan.jsonl"
    monkeypatch.setenv("LIBTPU_INIT_ARGS", " --xla_latency_hiding_scheduler_rerun=2 ")
    p = plan.run(tiny_config(), "cpu:8", hbm_gib=1.0, json_path=str(out), log=lambda s: None)
    assert set(p.programs) == {"sampler", "update"}
    parts, update = p.parts, p.programs["update"]
    # the update's arguments: train state (params, optimizer state, int32 step), teacher, batch
    assert (
        update.arguments
        == parts["params"] + parts["opt_state"] + parts["teacher"] + parts["batch"] + 4
    )
    assert update.aliased > 0  # the donated train state
    assert p.fits and update.flops > 0 and p.peak >= update.peak
    row = json.loads(out.read_text())
    assert row["batch"] == 8 and row["fits"] is True and row["dtypes"]["opt_state"] == "float32"
    assert row["libtpu_init_args"] == "--xla_latency_hiding_scheduler_rerun=2"
    # docs/results/plans.md's table from it (launch/plan_markdown.py), with a plan that did not fit
    (tmp_path / "plan.jsonl.done").write_text("a b v5e-8 8 remat+bf16-teacher does-not-fit\n")
    (tmp_path / "plan.jsonl.oom").write_text("a b v5e-8 8 remat+bf16-teacher\tneeds 20G.\n")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch"))
    import plan_markdown

    capped = {"compiler_options": {"sampler": {"xla_tpu_x": "50"}}}  # as a TPU plan's row
    with open(out, "a") as f:  # a --batch=bisect line: the largest batch's plan
        extra = {"largest_batch": 8, "smallest_not_fitting": 16}
        f.write(json.dumps(row | extra | capped) + "\n")
        lowered = {"train_percent": 60}  # the planner lowered the automatic cap to fit
        f.write(json.dumps(row | extra | capped | lowered) + "\n")
    lines = plan_markdown.table(str(out)).splitlines()
    assert len(lines) == 6
    assert lines[3].split("|")[4].strip() == "**8** largest (16 does not fit)"
    sampler_temp = f"{p.programs['sampler'].temporaries / 2**30:.2f}"
    assert lines[2].split("|")[11].strip() == sampler_temp  # no cap: CPU
    assert lines[3].split("|")[11].strip() == f"{sampler_temp} (cap 50 %)"
    lowered = f"{sampler_temp} (cap 50 %, lowered from 60 %: set it)"
    assert lines[4].split("|")[11].strip() == lowered
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    flags = "defaults (`LIBTPU_INIT_ARGS=--xla_latency_hiding_scheduler_rerun=2`)"
    assert cells[1:6] == ["cpu:8 (8)", flags, "8", "yes", f"{p.peak / 2**30:.2f} / 1.00"]
    assert cells[6:9] == [f"{parts[k] / 2**30:.2f}" for k in ("params", "opt_state", "teacher")]
    assert lines[5].startswith("| a ← b | v5e-8 | remat + bf16 teacher | 8 | **no**")
    assert "compile time (needs 20G) |" in lines[5]


def test_memory_fields_change_the_parts():
    """bfloat16 teacher parameters halve the teacher's part; bfloat16 master weights halve the
    student's and its AdamW moments."""
    base = plan.Planner(tiny_config(), plan_target.topology("cpu:8"))
    lean = plan.Planner(
        tiny_config(param_dtype="bfloat16", teacher_param_dtype="bfloat16", remat="full"),
        plan_target.topology("cpu:8"),
    )
    b, s = (sharding.per_device_bytes(x.teacher_params, x.teacher_shardings) for x in (base, lean))
    assert s * 2 == b
    assert lean.dtypes()["opt_state"] == "bfloat16" and lean.dtypes()["remat"] == "full"


@dataclasses.dataclass
class FakePlan:
    batch: int
    peak: int
    hbm: int = 40
    programs: dict = dataclasses.field(default_factory=dict)

    @property
    def fits(self):
        return self.peak <= self.hbm


class FakePlanner:
    """A planner whose batch b needs need(b) bytes: the search alone, without compiling. Above
    `oom_from` the compile fails as the TPU compiler's does (no peak to report)."""

    def __init__(self, hbm, need=lambda b: b, oom_from=None):
        self.target = plan_target.Target("fake", (), hbm, "fake")
        self.need, self.oom_from = need, oom_from
        self.calls = []

    def batch_unit(self):
        return 8

    def plan(self, batch):
        self.calls.append(batch)
        if self.oom_from is not None and batch >= self.oom_from:
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
        return FakePlan(batch, self.need(batch), self.target.hbm_bytes)


def brute_force(planner_args, limit=4096):
    """The largest multiple of 8 that fits, by trying every one (the reference)."""
    hbm, need, oom_from = planner_args
    fits = [b for b in range(8, limit + 1, 8) if need(b) <= hbm]
    return max(b for b in fits if oom_from is None or b < oom_from)


def test_search_finds_the_largest_batch_in_four_compiles_when_the_peak_is_affine():
    planner = FakePlanner(hbm=100)
    best, p, over = search.largest_batch(planner, log=lambda s: None)
    assert (best, over, p.batch) == (96, 104, 96)
    assert planner.calls == [8, 16, 96, 104]  # two points, the line's answer, one above it
    # a resident 7 GB + 0.3 GB per row in 95 GB: doubling then bisecting took 12 compiles
    planner = FakePlanner(hbm=95_000, need=lambda b: 7_000 + 300 * b)
    best, _, over = search.largest_batch(planner, log=lambda s: None)
    assert (best, over) == (288, 296) and len(planner.calls) == 4


@pytest.mark.parametrize(
    "hbm,need,oom_from",
    [
        (100, lambda b: b, None),
        (1000, lambda b: b * b // 8, None),  # superlinear: the line overshoots
        (1000, lambda b: 200 + 40 * b**0.5, None),  # sublinear: it undershoots
        (1000, lambda b: 100 + b, 200),  # the compiler runs out of memory before the peak says so
        (500, lambda b: 100 if b < 64 else 100 + 10 * b, None),  # a step in the curve
        (10**9, lambda b: b, None),  # everything fits: stops at the limit
    ],
)
def test_search_agrees_with_trying_every_batch(hbm, need, oom_from):
    planner = FakePlanner(hbm, need, oom_from)
    best, p, over = search.largest_batch(planner, log=lambda s: None)
    want = brute_force((hbm, need, oom_from))
    assert best == want and p.batch == want
    assert over == (None if want == 4096 else want + 8)
    assert len(set(planner.calls)) == len(planner.calls)  # no batch compiled twice
    assert len(planner.calls) <= 2 * 10 + 2  # about twice bisection's count at worst


def test_nothing_fits_at_the_smallest_batch():
    with pytest.raises(ValueError, match="does not fit on fake even at batch 8"):
        search.largest_batch(FakePlanner(hbm=5), log=lambda s: None)


def test_bisect_needs_a_capacity():
    with pytest.raises(ValueError, match="needs a capacity"):
        search.largest_batch(FakePlanner(hbm=None), log=lambda s: None)


def tpu_target(monkeypatch, name: str) -> plan_target.Target:
    """A TPU topology from the TPU compiler on this host (no TPU needed), or skip."""
    pytest.importorskip("libtpu", reason="jax[tpu] (pip install -e .[tpu-plan]) not installed")
    # libtpu takes a host-wide lock; compiling for a topology needs no TPU, so another process
    # (a planner running beside the tests) may hold it
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return plan_target.topology(name)
    except ValueError as e:
        pytest.skip(f"no TPU compiler here: {e}")


def test_tpu_hbm_is_where_the_compiler_refuses_a_program(monkeypatch):
    """A plan is judged against the HBM the TPU compiler lets a program use (less than the
    chip's 16 GiB on a v5e): a program a little under it compiles, one a little over does not."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    target = tpu_target(monkeypatch, "v5e-4")
    assert 15 * search.GIB < target.hbm_bytes <= 16 * search.GIB
    device = target.devices[0]
    x = jax.ShapeDtypeStruct((256, 1024), jnp.float32, sharding=SingleDeviceSharding(device))
    mib = 2**20

    def compiles(out_bytes: int) -> bool:  # one output of that size, 1 MiB of argument
        f = jax.jit(lambda x: jnp.sin(jnp.tile(x, (out_bytes // mib, 1))))
        try:
            f.lower(x).compile()
            return True
        except Exception as e:
            assert "RESOURCE_EXHAUSTED" in str(e)
            return False

    assert compiles(target.hbm_bytes - 16 * mib)
    assert not compiles(target.hbm_bytes + 16 * mib)
    # where the compiler would not say, the chip's figure
    monkeypatch.setattr(plan_target, "compiler_hbm_bytes", lambda device: None)
    assert plan_target.topology("v5e-4").hbm_bytes == 16 * search.GIB


def test_tpu_plan(monkeypatch):
    """The TPU compiler on this host (no TPU needed): a small pair on a v5e-4."""
    target = tpu_target(monkeypatch, "v5e-4")
    p = plan.Planner(tiny_config(), target).plan(8)
    assert p.kind == "TPU v5 lite" and p.hbm == target.hbm_bytes
    assert p.fits and p.programs["update"].flops > 0
    # the sampler was compiled with the scheduler's HBM share capped (the TPU compiler would
    # reject an option it does not know) at what the other resident buffers leave
    resident = p.parts["params"] + p.parts["opt_state"] + p.parts["teacher"] + p.parts["batch"]
    limit = sampler_memory.free_percent(p.hbm, resident)
    assert p.compiler_options == {"sampler": {sampler_memory.SCHEDULER_LIMIT: str(limit)}}
    assert p.row()["compiler_options"] == p.compiler_options
    assert p.row()["train_percent"] == limit  # it fit at the automatic cap: nothing lowered


def stand_in_planner(tmp_path, body: str):
    """A bash script that plan_table.sh runs as its planner ($PY): it logs its arguments to
    calls.txt, then runs `body`. Returns (calls file, the environment for plan_table.sh)."""
    calls, fake = tmp_path / "calls.txt", tmp_path / "fake_plan.sh"
    fake.write_text('#!/bin/bash\necho "$*" >> ' + str(calls) + "\n" + body)
    return calls, dict(os.environ, OUT=str(tmp_path / "plans.jsonl"), PY=f"bash {fake}")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN_TABLE = ["bash", os.path.join(REPO, "launch", "plan_table.sh"), "qwen2.5-7b"]


def test_plan_table_resumes_and_records_plans_that_do_not_fit(tmp_path):
    """launch/plan_table.sh with a stand-in planner: one line per finished plan in $OUT.done
    (fits, or does not at this batch), and a rerun skips every finished plan."""
    import subprocess

    calls, env = stand_in_planner(
        tmp_path,
        'if [[ "$*" == *lora.rank* ]]; then\n'
        '  echo "[plan] batch 8: out of memory at compile (1 s): RESOURCE_EXHAUSTED: Ran out of '
        "memory on HBM, the total memory required for HLO temporaries (19.93G) exceeds "
        'available HBM (15.75G)."\n'
        '  echo "ValueError: batch 8 runs out of memory on v5e-8 at compile time"; exit 1\nfi\n'
        # the first remat plan dies as one does when the kernel kills it for host RAM
        f'if [[ "$*" == *remat* && ! -e {tmp_path}/killed ]]; then\n'
        f'  touch {tmp_path}/killed; echo "[plan] compiling"; kill -KILL $$\nfi\n'
        'echo "  step peak  1.00 of 16.00 HBM: FITS"\n',
    )
    env["SLICES"] = "v5e-8"
    cmd, repo = PLAN_TABLE, REPO
    r = subprocess.run(cmd, env=env, cwd=repo, check=True, capture_output=True, timeout=60)
    done = (tmp_path / "plans.jsonl.done").read_text().splitlines()
    assert done == [
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 defaults ok",
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 bf16-student+remat+bf16-teacher ok",
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 lora16+remat+bf16-teacher does-not-fit",
    ]  # the killed plan is not done: the rerun plans it
    assert "(plan failed with exit status 137; see " in r.stdout.decode()
    (failed,) = tmp_path.glob("plans.jsonl.failed.*.log")
    assert failed.read_text() == "[plan] compiling\n"  # its log, kept
    assert len(calls.read_text().splitlines()) == 4
    assert "--config.param_dtype=bfloat16" in calls.read_text().splitlines()[2]
    subprocess.run(cmd, env=env, cwd=repo, check=True, capture_output=True, timeout=60)
    done = (tmp_path / "plans.jsonl.done").read_text().splitlines()
    assert done[-1] == "qwen2.5-1.5b qwen2.5-7b v5e-8 8 remat+bf16-teacher ok"
    assert len(calls.read_text().splitlines()) == 5
    assert "--topology=v5e-8" in calls.read_text() and "--batch=8" in calls.read_text()
    assert (tmp_path / "plans.jsonl.oom").read_text() == (
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 lora16+remat+bf16-teacher\tthe total memory required "
        "for HLO temporaries (19.93G) exceeds available HBM (15.75G).\n"
    )
    subprocess.run(cmd, env=env, cwd=repo, check=True, capture_output=True, timeout=60)
    assert len(calls.read_text().splitlines()) == 5  # nothing finished is planned twice


def test_model_flops_of_a_lora_student_skip_the_frozen_weight_gradients():
    """2 FLOPs per multiply-add: the plain student's update is forward + 2x backward (3x), a
    LoRA student's is forward + the activations' gradient (2x) + the adapters' weight gradient;
    the teacher's forward and the sampler are as for the plain student (adapters included)."""
    import math

    import jax
    from tiny_step_pair import STUDENT, TEACHER

    from gkd_jax.models import build_decoder, functional_lm, lora

    def counts(params):  # (layer matmul params, adapter params, head) by path, from the shapes
        layers = adapters = head = 0
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            name, n = jax.tree_util.keystr(path), math.prod(x.shape)
            if "embedding" in name:
                head = n  # tied
            else:
                layers += n
                adapters += n if "lora_" in name else 0
        return layers, adapters, head

    b, p, n = 2, 5, 3
    plain, _ = functional_lm(build_decoder(STUDENT, seed=1))
    adapted, _ = functional_lm(lora.add_lora(build_decoder(STUDENT, seed=1), rank=4, alpha=8.0))
    teacher, _ = functional_lm(build_decoder(TEACHER, seed=2))
    tl, _, th = counts(teacher)
    teacher_fwd = 2 * (tl * b * (p + n) + th * b * n)
    for params, lora_on in ((plain, False), (adapted, True)):
        layers, ad, head = counts(params)
        fwd = 2 * (layers * b * (p + n) + head * b * n)
        grads = 2 * ad * b * (p + n) if lora_on else fwd
        got = plan.model_flops(params, teacher, b, p, n)
        assert got["update"] == 2 * fwd + grads + teacher_fwd
        assert got["sampler"] == 2 * (layers * (b * p + b * n) + head * b * (n + 1))
    assert counts(adapted)[1] > 0


def test_plan_table_cascade_stops_at_the_first_variant_that_fits(tmp_path):
    """CASCADE=1: per pair and slice, the defaults, then remat + bf16 teacher, then LoRA, until
    one fits; finished cells are not planned again."""
    import subprocess

    # the defaults run out of memory on v5e-8 and compile on v5p-8 but past its HBM (no
    # verdict of FITS: the cascade goes on); remat fits everywhere
    calls, env = stand_in_planner(
        tmp_path,
        'if [[ "$*" != *remat* && "$*" == *v5e-8* ]]; then\n'
        '  echo "ValueError: batch 8 runs out of memory on v5e-8 at compile time"; exit 1\nfi\n'
        'if [[ "$*" != *remat* && "$*" == *v5p-8* ]]; then\n'
        '  echo "  step peak  96.00 of 95.00 HBM: DOES NOT FIT"; exit 0\nfi\n'
        'echo "  step peak  1.00 of 16.00 HBM: FITS"\n',
    )
    env |= {"SLICES": "v5e-8 v5p-8 v6e-8", "CASCADE": "1"}
    cmd, repo = PLAN_TABLE, REPO
    for _ in range(2):  # the second run plans nothing
        subprocess.run(cmd, env=env, cwd=repo, check=True, capture_output=True, timeout=60)
        assert (tmp_path / "plans.jsonl.done").read_text().splitlines() == [
            "qwen2.5-1.5b qwen2.5-7b v5e-8 8 defaults does-not-fit",
            "qwen2.5-1.5b qwen2.5-7b v5e-8 8 remat+bf16-teacher ok",
            "qwen2.5-1.5b qwen2.5-7b v5p-8 8 defaults over-hbm",
            "qwen2.5-1.5b qwen2.5-7b v5p-8 8 remat+bf16-teacher ok",
            "qwen2.5-1.5b qwen2.5-7b v6e-8 8 defaults ok",
        ]
        assert len(calls.read_text().splitlines()) == 5


def test_plan_markdown_orders_rows_by_pair_slice_and_variant(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch"))
    import plan_markdown

    out = tmp_path / "plans.jsonl"
    out.write_text("")
    keys = [
        "gemma-2-2b gemma-2-9b v5e-8 8 lora16+remat+bf16-teacher",
        "gemma-2-2b gemma-2-9b v5e-8 8 bf16-student+remat+bf16-teacher",
        "qwen2.5-1.5b qwen2.5-7b v5e-16 8 defaults",
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 remat+bf16-teacher",
        "qwen2.5-1.5b qwen2.5-7b v5e-8 8 defaults",
    ]
    # plans that compiled (ok, or over-hbm: past the chip's HBM) have JSON lines, not done rows
    compiled = "llama-3.2-1b llama-3.1-8b v5e-8 8 defaults over-hbm\n" + (
        "llama-3.2-1b llama-3.1-8b v5e-8 8 remat+bf16-teacher ok\n"
    )
    done = "".join(f"{k} does-not-fit\n" for k in keys)
    (tmp_path / "plans.jsonl.done").write_text(done + compiled)
    cells = [line.split("|")[1:4] for line in plan_markdown.table(str(out)).splitlines()[2:]]
    assert [[c.strip() for c in cell] for cell in cells] == [
        ["qwen2.5-1.5b ← qwen2.5-7b", "v5e-8", "defaults"],
        ["qwen2.5-1.5b ← qwen2.5-7b", "v5e-8", "remat + bf16 teacher"],
        ["qwen2.5-1.5b ← qwen2.5-7b", "v5e-16", "defaults"],
        ["gemma-2-2b ← gemma-2-9b", "v5e-8", "bf16 student + remat + bf16 teacher"],
        ["gemma-2-2b ← gemma-2-9b", "v5e-8", "lora16 + remat + bf16 teacher"],
    ]
    # a plan's JSON line is labelled in the same words as its plan_table.sh key
    dtypes = {"student": "bfloat16", "teacher": "bfloat16", "remat": "full", "lora": "0"}
    assert plan_markdown.variant({"dtypes": dtypes}) == "bf16 student + remat + bf16 teacher"
