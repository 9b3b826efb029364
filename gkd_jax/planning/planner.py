"""The planner: will a distillation run fit, and at what batch? The TPU compiler answers, from
abstract shapes (`python -m gkd_jax.plan` is its command line).

The models are built as shapes only (`nnx.eval_shape`: no weights), from a Hugging Face
config.json: `--student` / `--teacher` name one of gkd_jax/assets/shapes (see its README), or a
directory; without them, the config's own sources (config.init / config.teacher, or
config.model's shape). Then the trainer's own functions build what a training step runs, on a
mesh of the topology's devices (config.mesh.*): the on-policy sampler (step.training_sampling,
sampling.make_sampler) and the jitted GKD update (step.make_train_step: teacher scoring, the
loss, the student's gradient and optimizer update), each lowered and compiled by XLA for that
TPU (`jax.experimental.topologies`). The two run one after the other, never at once, so they
are planned as the two compiled programs they are, and a step's peak is the larger of theirs:

  sampler  resident train state and teacher + its arguments, outputs and temporaries (the KV
           cache is among the temporaries: its size is shown apart, from its shapes);
  update   its arguments (train state, teacher, batch), its outputs less those aliased to the
           donated state, and its temporaries.

Every figure is per device and comes from the compiler's `memory_analysis()`, except the split
of the arguments into parts, which is each part's sharded size (shapes x dtype / shards). FLOPs
are the compiler's `cost_analysis()` per device; a while loop's body counts once there, so the
sampler's figure is one prefill plus one decode step.

`--topology=cpu:N` plans on N host CPU devices instead (XLA_FLAGS=
--xla_force_host_platform_device_count=N): no libtpu needed, for tests; give --hbm_gib to bisect.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gkd_jax.data.resources import ASSETS, resolve_path
from gkd_jax.decoding.sampler_memory import (
    SCHEDULER_LIMIT,
    lower_until_it_fits,
    sampler_compiler_options,
)
from gkd_jax.decoding.sampling import make_sampler
from gkd_jax.models import COMPUTE_DTYPES, functional_lm, lora
from gkd_jax.models.hf import build_model, family_for_model_type, read_hf_config
from gkd_jax.models.prune import pruned_config
from gkd_jax.models.remat import set_remat
from gkd_jax.models.sources import init_layers, model_config
from gkd_jax.parallel import sharding
from gkd_jax.planning.search import gib, largest_batch, try_plan
from gkd_jax.planning.target import Target, make_mesh, topology
from gkd_jax.training import checkpoint
from gkd_jax.training.optim import make_optimizer
from gkd_jax.training.step import make_train_step, training_sampling

SHAPES = os.path.join(ASSETS, "shapes")


# ---------------------------------------------------------------------------- abstract models
def shape_dir(spec: str) -> str:
    """A model source naming a shapes asset (`qwen2.5-7b`), a builtin: path or a directory."""
    if os.path.isdir(os.path.join(SHAPES, spec)):
        return os.path.join(SHAPES, spec)
    path = resolve_path(spec)
    if not os.path.isdir(path):
        known = sorted(d for d in os.listdir(SHAPES) if os.path.isdir(os.path.join(SHAPES, d)))
        raise ValueError(f"model {spec!r}: neither a directory nor one of {known}")
    return path


def source_config(spec: str, config_model):
    """The model config (DecoderConfig or T5Config) of a source: a Hugging Face config.json, our
    checkpoint's metadata, or `config_model` (a config's decoder shape) when spec is ''."""
    if not spec:
        return model_config(config_model)
    path = shape_dir(spec)
    if checkpoint.has_model(path):
        return checkpoint.read_model_config(path)
    hf = read_hf_config(path)
    return family_for_model_type(hf["model_type"]).config_from_hf(hf)


def abstract_model(cfg, *, dtype, param_dtype, remat: str = "none", lora_config=None):
    """The model as shapes only: no parameter is ever allocated. With `lora_config` (config.lora,
    rank > 0) the student's adapters too, as the trainer adds them."""

    def build() -> nnx.Module:
        model = build_model(cfg, dtype=dtype, param_dtype=param_dtype)
        if lora_config is not None and lora_config.rank:
            lo = lora_config
            lora.add_lora(model, rank=lo.rank, alpha=lo.alpha, targets=lo.targets)
        return model

    return set_remat(nnx.eval_shape(build), remat)


def param_count(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def matmul_params(params, *, only_adapters: bool = False) -> dict[str, int]:
    """Parameters a token multiplies by, per stack: {"encoder", "decoder" (the layers), "head"
    (the output projection, tied or not)}; embedding lookups excluded. A decoder-only model's
    layers count as "decoder". `only_adapters`: the LoRA adapters alone."""
    out = {"encoder": 0, "decoder": 0, "head": 0}
    embed = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, n = sharding.path_string(path), math.prod(x.shape)
        if only_adapters and not re.search(r"/lora_[ab]\b", name):
            continue
        if re.search(r"(embed_tokens|shared)/embedding", name):
            embed = n
        elif "lm_head" in name:
            out["head"] = n
        elif name.startswith("encoder/"):
            out["encoder"] += n
        else:
            out["decoder"] += n
    out["head"] = out["head"] or embed  # tied: the embedding table is the head
    return out


def model_flops(student, teacher, batch: int, prompt: int, new: int) -> dict[str, float]:
    """Model FLOPs of one step (all devices): 2 per multiply-add of each token with the weights
    it passes (the student's forward + backward 3x), attention scores not counted. Decoder-only:
    prompt + completion through the layers, the head on the completion; T5: the prompt through
    the encoder, the completion through the decoder. Sampler: prefill + new tokens decoded.
    A LoRA student (adapters in `student`) computes no gradient for its frozen weights: its
    backward is the activations' gradient (1x forward) plus the adapters' weight gradient."""

    def fwd(m, rows_through_layers, rows_head, rows_encoder):
        return 2 * (
            m["decoder"] * rows_through_layers + m["head"] * rows_head + m["encoder"] * rows_encoder
        )

    def tokens(m):  # (through the decoder stack, encoder) per sequence when scoring
        return (new, prompt) if m["encoder"] else (prompt + new, 0)

    s, t = matmul_params(student), matmul_params(teacher)
    (s_dec, s_enc), (t_dec, t_enc) = tokens(s), tokens(t)
    adapters = matmul_params(student, only_adapters=True)
    weight_grads = adapters if any(adapters.values()) else s  # the trained weights' gradient
    s_rows = (batch * s_dec, batch * new, batch * s_enc)
    update = 2 * fwd(s, *s_rows) + fwd(weight_grads, *s_rows)
    update += fwd(t, batch * t_dec, batch * new, batch * t_enc)
    prefill = batch * (1 if s["encoder"] else prompt)
    sampler = fwd(
        s, prefill + batch * new, batch * (new + 1), batch * prompt if s["encoder"] else 0
    )
    return {"update": float(update), "sampler": float(sampler)}


# ---------------------------------------------------------------------------- the plan
def resident_bytes(parts: dict[str, int]) -> int:
    """Per device, what stays in HBM through the whole step: train state, teacher, batch."""
    return parts["params"] + parts["opt_state"] + parts["teacher"] + parts["batch"]


def with_shardings(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


@dataclasses.dataclass
class Program:
    """One compiled program's per-device memory (bytes) and FLOPs, as the compiler reports them."""

    name: str
    compile_s: float  # wall seconds
    compile_cpu_s: float  # this process's CPU seconds (all threads): apart from other load
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    flops: float

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def step_peak(sampler: Program, resident: int) -> int:
    """A sampler's peak in the step: with everything resident beside it (train state, teacher,
    batch) in place of its own arguments."""
    return sampler.peak - sampler.arguments + resident


def compile_program(name: str, jitted, *args) -> Program:
    t0, c0 = time.time(), time.process_time()
    compiled = jitted.lower(*args).compile()
    dt, cpu = time.time() - t0, time.process_time() - c0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else (cost or {})
    return Program(
        name, dt, cpu, m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
        m.temp_size_in_bytes, m.generated_code_size_in_bytes, float(cost.get("flops", 0.0)),
    )  # fmt: skip


@dataclasses.dataclass
class Plan:
    topology: str
    kind: str
    mesh: dict[str, int]
    batch: int
    prompt_len: int
    new_tokens: int
    hbm: int | None  # per device
    student_params: int  # parameter counts
    teacher_params: int
    parts: dict[str, int]  # per-device bytes: params, opt_state, teacher, batch, kv_cache
    model_flops: dict[str, float]  # per device, by program (model_flops / devices)
    programs: dict[str, Program]
    dtypes: dict[str, str]
    # per sampler, the compiler options it was compiled with (sampler_memory)
    compiler_options: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # the scheduler's share the trainer would use (config.sampler_hbm_percent, or automatic);
    # where the planner had to lower it to fit, the report says which to train with
    train_percent: int | None = None

    @property
    def peak(self) -> int:
        """The step's per-device peak: the largest program's, a sampler's with everything that
        stays resident beside it (train state, teacher, batch) in place of its arguments."""
        resident = resident_bytes(self.parts)
        peaks = [self.programs["update"].peak]
        for name, prog in self.programs.items():
            if name != "update":
                peaks.append(step_peak(prog, resident))
        return max(peaks)

    @property
    def fits(self) -> bool | None:
        return None if self.hbm is None else self.peak <= self.hbm

    def row(self) -> dict[str, Any]:
        """One JSON-lines record (bytes and FLOPs per device)."""
        d = {
            k: getattr(self, k)
            for k in ("topology", "kind", "mesh", "batch", "prompt_len", "new_tokens", "hbm")
        }
        d |= dict(
            student_params=self.student_params, teacher_params=self.teacher_params,
            parts=self.parts, model_flops=self.model_flops, peak=self.peak, fits=self.fits,
            dtypes=self.dtypes, compiler_options=self.compiler_options,
            train_percent=self.train_percent,
            programs={k: dataclasses.asdict(v) | {"peak": v.peak}
                      for k, v in self.programs.items()},
        )  # fmt: skip
        # the TPU compiler's own flags change what fits (the scheduler's memory limit, its
        # reruns on running out of memory): a plan made with them says so
        if flags := os.environ.get("LIBTPU_INIT_ARGS", "").strip():
            d["libtpu_init_args"] = flags
        return d


def report(plan: Plan) -> str:
    p, m = plan.parts, plan.mesh
    lines = [
        f"topology {plan.topology} ({len_devices(plan)} x {plan.kind}), mesh data={m['data']} "
        f"fsdp={m['fsdp']} tensor={m['tensor']}; batch {plan.batch} x ({plan.prompt_len} prompt "
        f"+ {plan.new_tokens} new tokens)",
        f"student {plan.student_params / 1e9:.3f}B parameters ({plan.dtypes['student']}, "
        f"optimizer state {plan.dtypes['opt_state']}, remat {plan.dtypes['remat']}), teacher "
        f"{plan.teacher_params / 1e9:.3f}B ({plan.dtypes['teacher']}), compute "
        f"{plan.dtypes['compute']}",
        f"per device, GiB (from the {'TPU' if plan.kind != 'cpu' else 'XLA:CPU'} compiler's "
        "memory analysis; the arguments' parts by their sharded shapes):",
        f"  student parameters  {gib(p['params']):>7}",
        f"  optimizer state     {gib(p['opt_state']):>7}",
        f"  teacher parameters  {gib(p['teacher']):>7}",
        f"  batch               {gib(p['batch']):>7}",
    ]
    for name, prog in plan.programs.items():
        kv = {"sampler": "kv_cache", "teacher_sampler": "teacher_kv_cache"}.get(name)
        extra = f" (KV cache {gib(p[kv])})" if kv else ""
        if opts := plan.compiler_options.get(name):
            percent = int(opts[SCHEDULER_LIMIT])
            extra += f" (scheduler at {percent} % of HBM"
            if plan.train_percent is not None and percent != plan.train_percent:
                extra += f"; train with --config.sampler_hbm_percent={percent}"
            extra += ")"
        mf = plan.model_flops.get(name)
        mf = "" if mf is None else f" (model FLOPs {mf / 1e12:.2f})"
        lines.append(
            f"  {name:<15} temporaries {gib(prog.temporaries):>7}{extra}; arguments "
            f"{gib(prog.arguments)}, outputs {gib(prog.outputs)} (aliased {gib(prog.aliased)}), "
            f"peak {gib(prog.peak)}; {prog.flops / 1e12:.2f} TFLOP/device by the compiler{mf}; "
            "compiled in "
            f"{prog.compile_s:.0f} s ({prog.compile_cpu_s:.0f} CPU s)"
        )
    verdict = {None: "(no capacity given)", True: "FITS", False: "DOES NOT FIT"}[plan.fits]
    lines.append(f"  step peak           {gib(plan.peak):>7} of {gib(plan.hbm)} HBM: {verdict}")
    return "\n".join(lines)


def len_devices(plan: Plan) -> int:
    return math.prod(plan.mesh.values())


class Planner:
    """Builds the run's abstract models and compiles its two programs at any batch size."""

    def __init__(
        self, config, target: Target, *, student: str | None = None, teacher: str | None = None,
        log: Callable[[str], None] = print,
    ):  # fmt: skip
        if config.objective != "gkd":
            raise ValueError("the planner plans GKD runs: config.objective must be 'gkd'")
        self.config, self.target, self.log = config, target, log
        self.mesh = make_mesh(config, target.devices)
        compute = COMPUTE_DTYPES[config.dtype]
        s_cfg = source_config(config.init.checkpoint if student is None else student, config.model)
        if student is None and init_layers(config):  # the student cut from its source's layers
            s_cfg = pruned_config(s_cfg, init_layers(config))
        t_cfg = source_config(
            config.teacher.checkpoint if teacher is None else teacher, config.teacher.get("model")
        )
        self.student = abstract_model(
            s_cfg, dtype=compute, param_dtype=COMPUTE_DTYPES[config.param_dtype],
            remat=config.remat, lora_config=config.lora,
        )  # fmt: skip
        self.teacher = abstract_model(
            t_cfg, dtype=compute, param_dtype=COMPUTE_DTYPES[config.teacher_param_dtype]
        )
        self.params, self.student_fns = functional_lm(self.student)
        self.teacher_params, self.teacher_fns = functional_lm(self.teacher)
        self.vocab = min(self.student_fns.vocab_size, self.teacher_fns.vocab_size)
        self.tx = make_optimizer(config)
        # The train state as sharding.init_train_state builds it: the optimizer state of the
        # trainable parameters (a LoRA student's adapters only).
        self.state = {
            "params": self.params,
            "opt_state": jax.eval_shape(self.tx.init, lora.trainable_params(self.params)),
            "step": jax.ShapeDtypeStruct((), jnp.int32),
        }
        self.state_shardings = sharding.tree_shardings(self.state, self.mesh)
        self.teacher_shardings = sharding.tree_shardings(self.teacher_params, self.mesh)
        eos = getattr(s_cfg, "eos_token_id", None)
        self.stops = tuple(np.atleast_1d(eos).tolist()) if eos is not None else (1,)

    def batch_unit(self) -> int:
        """Batch sizes the trainer accepts are multiples of this (config_checks)."""
        return self.config.grad_accum * len(self.target.devices)

    def plan(self, batch: int) -> Plan:
        config, mesh = self.config, self.mesh
        if batch % self.batch_unit():
            raise ValueError(
                f"batch {batch}: must be a multiple of grad_accum x devices = {self.batch_unit()}"
            )
        config = _with(config, batch_size=batch)
        p, n = config.data.max_prompt_len, config.max_new_tokens
        rows = sharding.batch_sharding(mesh)
        whole = sharding.replicated(mesh)
        batch_shapes = {
            "prompt": jax.ShapeDtypeStruct((batch, p), jnp.int32, sharding=rows),
            "prompt_mask": jax.ShapeDtypeStruct((batch, p), jnp.bool_, sharding=rows),
            "completion": jax.ShapeDtypeStruct((batch, n), jnp.int32, sharding=rows),
            "completion_mask": jax.ShapeDtypeStruct((batch, n), jnp.bool_, sharding=rows),
        }
        state = with_shardings(self.state, self.state_shardings)
        teacher = with_shardings(self.teacher_params, self.teacher_shardings)
        parts = {
            "params": sharding.per_device_bytes(self.params, self.state_shardings["params"]),
            "opt_state": sharding.per_device_bytes(
                self.state["opt_state"], self.state_shardings["opt_state"]
            ),
            "teacher": sharding.per_device_bytes(self.teacher_params, self.teacher_shardings),
            "batch": sharding.per_device_bytes(batch_shapes, {k: rows for k in batch_shapes}),
        }
        programs = {}
        g = config.gkd
        # The samplers a step may run (step.gkd_completions): the student's with lmbda > 0, the
        # teacher's with seq_kd and lmbda < 1.
        samplers = {}
        if g.lmbda > 0:
            samplers["sampler"] = (self.student_fns, state["params"])
        if g.seq_kd and g.lmbda < 1:
            samplers["teacher_sampler"] = (self.teacher_fns, teacher)
        sampling = training_sampling(config, self.stops, 0, self.vocab)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=whole)
        # as the trainer compiles every decoder: the scheduler's HBM share capped at what the
        # resident train state, teacher and batch leave free (sampler_memory)
        resident = resident_bytes(parts)
        options = sampler_compiler_options(
            config.sampler_hbm_percent, self.target.devices[0].platform,
            self.target.hbm_bytes, resident,
        )  # fmt: skip
        used = {}  # the options each sampler was compiled with
        prompt = (batch_shapes["prompt"], batch_shapes["prompt_mask"])
        for name, (fns, params) in samplers.items():

            def compile_with(opts, name=name, fns=fns, params=params):
                sampler = make_sampler(fns.decoding, sampling, rows=rows, compiler_options=opts)
                return compile_program(name, sampler, params, *prompt, key)

            if options and not config.sampler_hbm_percent:  # automatic: lowered if over HBM
                percent, programs[name] = lower_until_it_fits(
                    lambda pc: compile_with({SCHEDULER_LIMIT: str(pc)}),
                    lambda prog: step_peak(prog, resident),
                    int(options[SCHEDULER_LIMIT]), self.target.hbm_bytes, log=self.log,
                )  # fmt: skip
                used[name] = {SCHEDULER_LIMIT: str(percent)}
            else:
                programs[name] = compile_with(options)
                used[name] = options
            kv = "kv_cache" if name == "sampler" else "teacher_kv_cache"
            parts[kv] = self.kv_cache_bytes(fns, params, batch_shapes, n)
        train_step = make_train_step(
            config, self.student_fns, self.teacher_fns, self.tx, mesh=mesh,
            state_shardings=self.state_shardings, teacher_shardings=self.teacher_shardings,
        )  # fmt: skip
        programs["update"] = compile_program("update", train_step, state, teacher, batch_shapes)
        return Plan(
            self.target.name, self.target.kind, dict(mesh.shape), batch, p, n,
            self.target.hbm_bytes,
            param_count(self.params), param_count(self.teacher_params), parts,
            {k: v / len(self.target.devices) for k, v in
             model_flops(self.params, self.teacher_params, batch, p, n).items()},
            programs,
            self.dtypes(),
            {k: v for k, v in used.items() if v},
            int(options[SCHEDULER_LIMIT]) if options else None,
        )  # fmt: skip

    def kv_cache_bytes(self, fns, params, batch_shapes, n: int) -> int:
        """Per device: the decoding state after prefill (KV cache; T5: and the cross K/V) with
        its rows split over data x fsdp, as the models pin them."""
        _, state = jax.eval_shape(
            lambda w, pr, pm: fns.decoding.prefill(w, pr, pm, n),
            params, batch_shapes["prompt"], batch_shapes["prompt_mask"],
        )  # fmt: skip
        rows = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        total = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
        return total // rows

    def dtypes(self) -> dict[str, str]:
        opt = {str(x.dtype) for x in jax.tree.leaves(self.state["opt_state"]) if x.ndim}
        return dict(
            student=self.config.param_dtype, teacher=self.config.teacher_param_dtype,
            compute=self.config.dtype, opt_state="/".join(sorted(opt)) or "-",
            remat=self.config.remat, lora=str(self.config.lora.rank),
        )  # fmt: skip


def _with(config, **fields):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for k, v in fields.items():
            c[k] = v
    return c


def run(
    config, topology_name: str, *, batch: str = "", student: str | None = None,
    teacher: str | None = None, hbm_gib: float | None = None, json_path: str = "",
    log: Callable[[str], None] = print,
) -> Plan:  # fmt: skip
    """The command line's work: plan at `batch` ("" = config.batch_size, or "bisect": the largest
    that fits), print the report, append a JSON line to `json_path` ("-": stdout). Returns the
    plan printed (bisect: the largest batch's)."""
    target = topology(topology_name, hbm_gib=hbm_gib)
    t0 = time.time()
    planner = Planner(config, target, student=student, teacher=teacher, log=log)
    log(f"[plan] abstract models and mesh built in {time.time() - t0:.1f} s")
    row_extra = {}
    if batch == "bisect":
        best, plan, over = largest_batch(planner, log)
        row_extra = {"largest_batch": best, "smallest_not_fitting": over}
        log(f"[plan] largest batch that fits: {best}" + (f" ({over} does not)" if over else ""))
    else:
        size = int(batch) if batch else config.batch_size
        plan = try_plan(planner, size, log)
        if plan is None:
            raise ValueError(f"batch {size} runs out of memory on {target.name} at compile time")
    log(report(plan))
    if json_path:
        line = json.dumps(plan.row() | row_extra | {"student": student, "teacher": teacher})
        if json_path == "-":
            print(line, flush=True)
        else:
            with open(json_path, "a") as f:
                f.write(line + "\n")
    return plan
