"""Run a sweep (one of launch/sweeps/registry.py) locally, or print its commands for a fan-out.

    python launch/sweep.py --sweep=arith --root=/tmp/arith-sweep [--dry_run] [--only=REGEX] \
        [--parallel=1] [--config.steps=150 ...]
    python launch/sweep.py --sweep=xsum:stage=gkd --root=gs://BUCKET/xsum --print_commands

Each run is `python -m gkd_jax.train --config=... --workdir=ROOT/NAME <flags>` in its own
process (its output in ROOT/NAME/log.txt); trailing `--config.X=V` flags go to every run. A run
whose ROOT/NAME/results.json exists is skipped, and an interrupted one resumes from its own
checkpoints, so rerunning the same command finishes a sweep. ROOT/NAME/sweep_run.json records the
run's axes (lmbda, divergence, student, seed, ...) for launch/collect.py.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Definitions import `sweeps.runs`, and gkd_jax (their `:arg` parser) from this repository, the
# one the runs train with.
sys.path[:0] = [HERE, REPO]

from sweeps.registry import SWEEPS  # noqa: E402
from sweeps.runs import Run  # noqa: E402


def load_sweep(spec: str) -> list[Run]:
    """`name[:arg]` -> the runs of sweep `name` (launch/sweeps/registry.py)."""
    name, _, arg = spec.partition(":")
    if name not in SWEEPS:
        raise SystemExit(f"--sweep={spec}: no sweep {name!r}; known sweeps: {sorted(SWEEPS)}")
    runs = SWEEPS[name](arg)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"--sweep={spec}: run names repeat, so their workdirs would collide")
    return runs


def select(runs: list[Run], only: str | None, extra: list[str]) -> list[Run]:
    if only:
        runs = [r for r in runs if re.search(only, r.name)]
    return [Run(r.name, r.config, (*r.flags, *extra), r.axes) for r in runs]


def is_done(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "results.json"))


def run_one(run: Run, root: str, python: str) -> tuple[str, int, float]:
    """Train one run in a child process (fresh XLA state and memory for each); returns
    (name, exit code, seconds)."""
    workdir = os.path.join(root, run.name)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep_run.json"), "w") as f:
        json.dump({"name": run.name, "config": run.config, "flags": run.flags, "axes": run.axes},
                  f, indent=2)  # fmt: skip
    t0 = time.time()
    with open(os.path.join(workdir, "log.txt"), "a") as log:
        code = subprocess.call(run.argv(root, python), cwd=REPO, stdout=log, stderr=log)
    return run.name, code, time.time() - t0


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", required=True, help="name[:arg] of launch/sweeps/registry.py")
    ap.add_argument("--root", required=True, help="one workdir per run is made under it")
    ap.add_argument("--only", default=None, help="regex: run only the runs whose name matches")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (local processes)")
    ap.add_argument("--dry_run", action="store_true", help="list what would run, run nothing")
    ap.add_argument(
        "--print_commands", action="store_true",
        help="print 'NAME<TAB>COMMAND' per run not yet done (for a fan-out)",
    )  # fmt: skip
    ap.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    args, rest = ap.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        ap.error(f"unrecognized arguments {bad}: only --config.X=V overrides pass to the runs")
    if args.parallel < 1:
        ap.error(f"--parallel={args.parallel}: must be >= 1")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    runs = select(load_sweep(args.sweep), args.only, extra)
    todo = [r for r in runs if not is_done(os.path.join(args.root, r.name))]
    if args.print_commands:  # the remote side runs in the repository root, like run_one
        python = "python" if args.python == sys.executable else args.python
        for r in todo:
            print(f"{r.name}\t{r.command(args.root, python)}")
        return 0
    print(f"{len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run", flush=True)
    if args.dry_run:
        for r in todo:
            print(r.command(args.root, args.python))
        return 0
    root = os.path.abspath(args.root)  # the runs start in the repository root, not here
    failed = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, code, seconds in pool.map(lambda r: run_one(r, root, args.python), todo):
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"{name}: {status} in {seconds / 60:.1f} min", flush=True)
            if code != 0:
                failed.append(name)
    if failed:
        print(f"{len(failed)} failed; see ROOT/NAME/log.txt: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
