"""Every command the documentation names runs: each `python -m gkd_jax.X`, `python launch/*.py`
and `python benchmarks/*.py` in README.md and the Markdown under docs/ (and launch/, benchmarks/),
read now, so a new page is covered as it lands, answers --help with exit status 0 and its usage;
all of them at once, in threads."""

import functools
import os
import pathlib
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"\bpython3? +(?:-m +(gkd_jax(?:\.\w+)+)|((?:launch|benchmarks)/[\w/]+\.py))")
THE_COMMANDS = {
    f"gkd_jax.{m}" for m in ("train", "evaluate", "plan", "teacher_cache", "teacher_replies",
                             "export")
}  # fmt: skip
USAGE = re.compile(r"^usage: |^flags:$", re.MULTILINE)  # argparse's, absl's
MARKDOWN_DIRS = ("docs", "launch", "benchmarks")
THREADS = 3  # mostly import time, partly waiting on the disk: a little over the 2 cores


def documented_commands() -> list[str]:
    """`gkd_jax.X` (a module) and `launch/x.py` (a script) for each command the Markdown
    names, sorted."""
    pages = [REPO / "README.md"]
    pages += [page for d in MARKDOWN_DIRS for page in sorted((REPO / d).rglob("*.md"))]
    found = set()
    for page in pages:
        for module, script in COMMAND.findall(page.read_text()):
            found.add(module or script)
    return sorted(found)


COMMANDS = documented_commands()


def argv(command: str) -> list[str]:
    if command.endswith(".py"):
        return [sys.executable, command, "--help"]
    return [sys.executable, "-m", command, "--help"]


@functools.cache
def help_of_every_command() -> dict[str, subprocess.CompletedProcess]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def run(command):
        return subprocess.run(
            argv(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    with ThreadPoolExecutor(THREADS) as pool:
        return dict(zip(COMMANDS, pool.map(run, COMMANDS), strict=True))


def test_the_documentation_names_the_commands():
    assert THE_COMMANDS <= set(COMMANDS), sorted(THE_COMMANDS - set(COMMANDS))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_documented_command_answers_help(command):
    if command.endswith(".py"):
        assert (REPO / command).is_file(), f"{command}: no such script"
    proc = help_of_every_command()[command]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv(command)[1:])}: exit {proc.returncode}\n{output}"
    assert USAGE.search(output) and "--" in output, output
