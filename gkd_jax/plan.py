"""Will a distillation run fit, and at what batch? The TPU compiler answers, from abstract shapes.

    pip install -e .[tpu-plan]   # jax[tpu]: libtpu compiles for TPUs on any host, no TPU needed
    python -m gkd_jax.plan --config=configs/chat.py --student=qwen2.5-1.5b --teacher=qwen2.5-7b \\
        --topology=v5e-8 --config.mesh.fsdp=-1 --batch=8
    python -m gkd_jax.plan ... --batch=bisect      # the largest per-step batch that fits

How it plans: gkd_jax/planning/planner.py.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gkd_jax.config import cli
from gkd_jax.planning.planner import run
from gkd_jax.planning.target import known_topologies


def _cli() -> None:  # pragma: no cover - tests call run()
    config = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    topo = flags.DEFINE_string("topology", None, f"One of: {known_topologies()}.")
    batch = flags.DEFINE_string("batch", "", "N, or 'bisect'; default config.batch_size.")
    student = flags.DEFINE_string("student", None, "Shapes name or HF dir (default: config).")
    teacher = flags.DEFINE_string("teacher", None, "Shapes name or HF dir (default: config).")
    hbm = flags.DEFINE_float("hbm_gib", None, "Per-device capacity (default: the chip's).")
    out = flags.DEFINE_string("json", "", "Append a JSON line here ('-': stdout).")
    flags.mark_flags_as_required(["config", "topology"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # jax's INFO lines: backends it did not start
        # a user's mistake or a run that cannot fit (ValueError): said plainly, by cli.run_app
        run(config.value, topo.value, batch=batch.value, student=student.value,
            teacher=teacher.value, hbm_gib=hbm.value, json_path=out.value)  # fmt: skip

    cli.run_app(main)


if __name__ == "__main__":
    _cli()
