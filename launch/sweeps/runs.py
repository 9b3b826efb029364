"""What a sweep is made of: runs (a name, a config file with its `:arg`, `--config.X=V` flags)
and the paper's axes (lmbda x divergence x student size x seed) as plain data.

A sweep is a function `get_runs(arg: str) -> list[Run]` named in registry.py, in a module of
this folder whose docstring gives the exact command; launch/sweep.py runs it, launch/collect.py
reads its results.
"""

import dataclasses
import itertools
import os
import shlex
from typing import Any

# The paper's divergences (Agarwal et al. 2024, Figures 4-6) by the names the figures use: each
# is the trainer flags that select it. JSD(beta) interpolates forward (beta=0) and reverse (1) KL.
DIVERGENCES: dict[str, tuple[str, ...]] = {
    "fkl": ("--config.gkd.divergence=fkl",),
    "jsd0.1": ("--config.gkd.divergence=jsd", "--config.gkd.beta=0.1"),
    "jsd0.5": ("--config.gkd.divergence=jsd", "--config.gkd.beta=0.5"),
    "jsd0.9": ("--config.gkd.divergence=jsd", "--config.gkd.beta=0.9"),
    "rkl": ("--config.gkd.divergence=rkl",),
}
PAPER_LMBDAS = (0.0, 0.5, 1.0)  # student data fraction: 0 supervised KD, 1 fully on-policy
PAPER_SIZES = ("small", "base", "large")  # T5 students; the teacher is T5-XL


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run. `axes` (e.g. lmbda, divergence, student, seed, method) is what
    launch/collect.py groups by; it is saved beside the results as sweep_run.json. `{root}` in
    the config or a flag is the sweep's root directory (where another run of the sweep, e.g. an
    SFT stage, left its model)."""

    name: str
    config: str  # path relative to the repository root, optionally with ":arg"
    flags: tuple[str, ...] = ()
    axes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def argv(self, root: str, python: str = "python") -> list[str]:
        """The training command; the run's workdir is ROOT/NAME."""
        return [
            python, "-m", "gkd_jax.train", f"--config={self.config.replace('{root}', root)}",
            f"--workdir={os.path.join(root, self.name)}",
            *(flag.replace("{root}", root) for flag in self.flags),
        ]  # fmt: skip

    def command(self, root: str, python: str = "python") -> str:
        return shlex.join(self.argv(root, python))


def grid(**axes: Any) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis slowest (so a sweep's runs come in
    the order a table reads)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def fmt_lmbda(lmbda: float) -> str:
    return f"{lmbda:g}"


def divergence_run(
    prefix: str, config: str, lmbda: float, divergence: str, extra: tuple[str, ...] = (), **axes
) -> Run:
    """A GKD run at one grid point; the name reads like `arith_lmbda0.5_jsd0.9_seed0`."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence {divergence!r}: pick one of {sorted(DIVERGENCES)}")
    tail = "".join(f"_{k}{v}" for k, v in axes.items())
    return Run(
        name=f"{prefix}_lmbda{fmt_lmbda(lmbda)}_{divergence}{tail}",
        config=config,
        flags=(f"--config.gkd.lmbda={lmbda:g}", *DIVERGENCES[divergence], *extra),
        axes={"method": "gkd", "lmbda": lmbda, "divergence": divergence, **axes},
    )
