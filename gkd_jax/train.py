"""Entry point: python -m gkd_jax.train --config=configs/arith.py --workdir=/tmp/gkd-arith

Any config field can be overridden: --config.gkd.lmbda=0.5 --config.steps=100.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gkd_jax.config import cli
from gkd_jax.evaluation import comparison
from gkd_jax.parallel import distributed
from gkd_jax.training import trainer
from gkd_jax.training.preemption import Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    distributed.initialize_from_env()  # before anything touches a device
    try:
        # config.compare_lmbdas: the same run at other lmbdas first, printed beside it
        comparison.train_with_comparisons(_CONFIG.value, _WORKDIR.value, trainer.train_and_evaluate)
    except Preempted as stop:  # the state is saved: a clean exit, so a scheduler reruns us
        print(stop, flush=True)


if __name__ == "__main__":
    cli.run_app(main)
