"""Precompute a teacher's top-K + tail on a dataset's training targets, once, for supervised KD
(lmbda 0) without the teacher in memory:

    python -m gkd_jax.teacher_cache --config=configs/arith.py --out=/tmp/arith-top8 \\
        --config.gkd.teacher_top_k=8 [--dtype=bfloat16] [--shard_size=1024] [--batch_size=256]
    python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-cached \\
        --config.gkd.teacher_top_k=8 --config.gkd.teacher_cache=/tmp/arith-top8 \\
        --config.gkd.lmbda=0 --config.compare_lmbdas=

How the cache is made and what it holds: gkd_jax/training/teacher_cache_build.py.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gkd_jax.config import cli
from gkd_jax.training import teacher_cache_store as store
from gkd_jax.training.teacher_cache_build import build_cache


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program (as gkd_jax.evaluate's): importing this
    module adds nothing to absl's global flags."""
    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_string("out", None, "The cache directory (made, or finished if interrupted).")
    flags.DEFINE_string("workdir", "", "Where workdir-relative models live; '' = OUT/workdir.")
    flags.DEFINE_enum("dtype", "float32", list(store.LOGP_DTYPES), "Log-prob storage dtype.")
    flags.DEFINE_integer("shard_size", 1024, "Examples per npz shard.")
    flags.DEFINE_integer("batch_size", 0, "Teacher batch; 0 = config.eval.batch_size.")
    flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    build_cache(
        f.config, f.out, workdir=f.workdir, logp_dtype=f.dtype, shard_size=f.shard_size,
        batch_size=f.batch_size,
    )  # fmt: skip


if __name__ == "__main__":
    define_flags()
    cli.run_app(main)
