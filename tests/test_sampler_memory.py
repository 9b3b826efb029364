"""config.sampler_hbm_percent: the TPU scheduler's HBM share for the sampler (sampler_memory).
The TPU compiler accepting the option is checked in test_plan.py::test_tpu_plan."""

import os

import jax
import pytest

from gkd_jax.config.defaults import base_config
from gkd_jax.decoding import sampler_memory
from gkd_jax.decoding.sampler_memory import SCHEDULER_LIMIT, free_percent, sampler_compiler_options
from gkd_jax.models import build_decoder
from gkd_jax.models.sources import model_config
from gkd_jax.parallel import sharding
from gkd_jax.training import trainer
from gkd_jax.training.optim import make_optimizer

GIB = 2**30


def test_free_percent_rounds_down_less_the_overshoot_and_keeps_at_least_one():
    over = sampler_memory.OVERSHOOT_PERCENT
    assert free_percent(16 * GIB, 0) == 100 - over
    assert free_percent(16 * GIB, 7.48 * GIB) == 53 - over  # 53.25 %
    assert free_percent(16 * GIB, 8 * GIB - 1) == 50 - over  # 50.000...06 %: not 51
    assert free_percent(16 * GIB, 16 * GIB) == 1  # nothing free: the plan reports the overflow
    assert free_percent(16 * GIB, 40 * GIB) == 1
    with pytest.raises(ValueError, match="positive"):
        free_percent(0, 0)


def test_the_cap_is_lowered_by_the_excess_until_the_step_fits():
    """The measured Llama-3.1-8B sampler (bf16, v5e-8): 7.48 GiB resident, temporaries by limit;
    the automatic 49 % puts the step 1.34 GiB over 15.75, so 49 - ceil(8.5) = 40 % is next."""
    temporaries = {49: 9.61, 40: 7.95, 50: 7.95, 45: 8.91}  # GiB, as the TPU compiler planned
    hbm, calls, lines = 15.75 * GIB, [], []

    def compile_at(percent):
        calls.append(percent)
        return temporaries[percent]

    def step_peak(temp):
        return int((7.48 + temp) * GIB)

    got = sampler_memory.lower_until_it_fits(compile_at, step_peak, 49, hbm, log=lines.append)
    assert got == (40, 7.95) and calls == [49, 40]
    assert "at 49 % of HBM: step peak 17.09 GiB, over 15.75; compiling it again at 40 %" in lines[0]
    # already fits: one compile
    calls.clear()
    assert sampler_memory.lower_until_it_fits(compile_at, step_peak, 50, hbm, log=print)[0] == 50
    assert calls == [50]


def test_a_cap_that_never_fits_keeps_the_lowest_peak_in_its_tries():
    peaks = {60: 50, 35: 55, 1: 45}  # over 40 at every limit, and not monotone in it
    calls = []

    def compile_at(percent):
        calls.append(percent)
        return peaks[percent]

    # 50 is 10 over 40 (25 %): 60 -> 35; 55 is 15 over (38 %): 35 -> 1 (the floor)
    got = sampler_memory.lower_until_it_fits(compile_at, lambda p: p, 60, 40, tries=2, log=print)
    assert got == (60, 50) and calls == [60, 35]  # the lowest peak, not the last
    calls.clear()
    got = sampler_memory.lower_until_it_fits(compile_at, lambda p: p, 60, 40, tries=9, log=print)
    assert got == (1, 45) and calls == [60, 35, 1]  # nothing below 1 % to try


def test_options_only_on_tpu():
    assert sampler_compiler_options(0, "cpu", 16 * GIB, GIB) is None
    assert sampler_compiler_options(30, "gpu", 16 * GIB, GIB) is None
    assert sampler_compiler_options(30, "tpu", None, GIB) == {SCHEDULER_LIMIT: "30"}
    assert sampler_compiler_options(0, "tpu", None, GIB) is None  # capacity unknown: default
    limit = str(75 - sampler_memory.OVERSHOOT_PERCENT)
    assert sampler_compiler_options(0, "tpu", 16 * GIB, 4 * GIB) == {SCHEDULER_LIMIT: limit}


def test_trainer_caps_the_samplers_at_what_the_resident_buffers_leave(monkeypatch, capsys):
    """With a TPU backend faked: the decoders (training samplers, evaluation) are capped at the
    HBM share that the train state (parameters, optimizer state, step) and the teacher leave,
    as they lie on 8 devices."""
    config = base_config()
    mesh = sharding.make_mesh(1, 8, 1)  # FSDP: each device holds an eighth
    cfg = model_config(config.model)
    student, _ = trainer.functional_lm(sharding.shard_model(lambda: build_decoder(cfg), mesh))
    teacher = sharding.shard_model(lambda: build_decoder(cfg, seed=1), mesh)
    teacher_params, _, teacher_shardings = trainer.place_teacher(teacher, mesh)
    state, shardings, _ = trainer.init_state(config, student, make_optimizer(config), mesh)
    n = sum(x.size for x in jax.tree.leaves(student))
    # float32 parameters, AdamW's two moments and the teacher, 4 bytes each, sharded 8 ways
    # (a little more: uneven shards, e.g. the 99-row embedding's 13 rows; the int32 step)
    low = 4 * n * 4 // 8
    high = low * 103 // 100
    resident = sharding.per_device_bytes(state, shardings) + sharding.per_device_bytes(
        teacher_params, teacher_shardings
    )
    assert low < resident < high
    args = (config, state, shardings, teacher_params, teacher_shardings)
    assert trainer.sampler_options(*args) is None  # CPU
    hbm = 3 * resident  # a share far from 100 %
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setattr(trainer, "device_hbm_bytes", lambda: hbm)
    limit = {SCHEDULER_LIMIT: str(66 - sampler_memory.OVERSHOOT_PERCENT)}
    assert trainer.sampler_options(*args) == limit
    said = capsys.readouterr().out
    assert f"TPU scheduler at {limit[SCHEDULER_LIMIT]} % of HBM (automatic)" in said
    assert "python -m gkd_jax.plan" in said
    config.sampler_hbm_percent = 40
    assert trainer.sampler_options(*args) == {SCHEDULER_LIMIT: "40"}
    assert "at 40 % of HBM (sampler_hbm_percent)" in capsys.readouterr().out


def test_device_hbm_bytes_is_none_where_the_runtime_does_not_say():
    got = sampler_memory.device_hbm_bytes()
    assert got is None or got > 0


def test_every_decoder_of_a_run_gets_the_options(tmp_path, monkeypatch):
    """trainer.setup hands sampler_options to the training samplers and the eval decoders (on
    CPU they are then built without them: XLA:CPU rejects the TPU option)."""
    from test_trainer import REPO

    from gkd_jax.config.loading import load_config_file

    marker = {SCHEDULER_LIMIT: "37"}
    seen = []

    def recording(make):
        def wrapped(*args, compiler_options=None, **kwargs):
            seen.append((make.__name__, compiler_options))
            return make(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(trainer, "sampler_options", lambda *a: marker)
    monkeypatch.setattr(trainer, "make_sampler", recording(trainer.make_sampler))
    monkeypatch.setattr(trainer, "make_eval_decoder", recording(trainer.make_eval_decoder))
    config = load_config_file(os.path.join(REPO, "configs", "arith.py"))  # shipped models
    config.eval.num_examples = 64  # the start's evaluations, kept short
    trainer.setup(config, str(tmp_path))
    assert sorted(seen) == [("make_eval_decoder", marker)] * 2 + [("make_sampler", marker)] * 2
