"""The sampler's temporaries against the TPU scheduler's HBM limit, by the TPU compiler on this
host (jax[tpu]; no TPU): the planner's sampler for a pair compiled at each limit, the update not
compiled. One JSON line per limit.

    python benchmarks/sampler_cap_sweep.py --percents 30,40,45,47,49,50,55,60 \
        [--student llama-3.1-8b --teacher llama-3.1-8b --topology v5e-8 --batch 8]

Defaults: bfloat16 Llama-3.1-8B -> 8B with remat and a bfloat16 teacher on a v5e-8 (fsdp 8),
batch 8 x (512 prompt + 128 new tokens), configs/chat.py: the plan whose automatic cap (49 %)
put the step over HBM (sampler_memory.lower_until_it_fits). About a minute a limit on a 2-core
CPU, ~10 GB of host RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gkd_jax.config.loading import load_config_file  # noqa: E402
from gkd_jax.decoding.sampler_memory import SCHEDULER_LIMIT  # noqa: E402
from gkd_jax.planning import planner as plan  # noqa: E402
from gkd_jax.planning import target as plan_target


class SamplerOnly(Exception):
    """Raised where the planner would compile the update: this sweep needs the sampler only."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--percents", default="30,40,45,47,49,50,55,60")
    ap.add_argument("--student", default="llama-3.1-8b")
    ap.add_argument("--teacher", default="llama-3.1-8b")
    ap.add_argument("--topology", default="v5e-8")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    config = load_config_file("configs/chat.py")
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.data.max_prompt_len, config.max_new_tokens = 512, 128
    config.remat, config.param_dtype, config.teacher_param_dtype = "full", "bfloat16", "bfloat16"
    target = plan_target.topology(args.topology)
    planner = plan.Planner(config, target, student=args.student, teacher=args.teacher)
    compile_program = plan.compile_program
    found = {}

    def sampler_only(name, jitted, *a):
        if name == "update":
            raise SamplerOnly
        found[name] = compile_program(name, jitted, *a)
        return found[name]

    plan.compile_program = sampler_only
    for percent in (int(p) for p in args.percents.split(",")):
        config.sampler_hbm_percent = percent  # a fixed limit: compiled once, as given
        try:
            planner.plan(args.batch)
        except SamplerOnly:
            pass
        prog = found["sampler"]
        print(json.dumps({
            "student": args.student, "teacher": args.teacher, "topology": args.topology,
            "batch": args.batch, SCHEDULER_LIMIT: percent, "hbm": target.hbm_bytes,
            "temporaries": prog.temporaries, "arguments": prog.arguments,
            "outputs": prog.outputs, "compile_s": round(prog.compile_s, 1),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
