"""A failure the user can fix ends in its message, not a wall of library frames (config/cli.py):
`error: ...` on stderr, exit status 2, the traceback in a file the message names (or on the
console with GKD_TRACEBACK=1); a bug still shows its traceback."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from gkd_jax.config import cli
from gkd_jax.data.resources import resolve_model_dir

REPO = pathlib.Path(__file__).resolve().parent.parent
SHORT = 15  # lines of stderr a user-fixable failure may take


def train(tmp_path, *args, **extra_env):
    """`python -m gkd_jax.train` offline, on an empty hub cache (a machine that holds the model
    must fail here as well, not start an XSum run)."""
    env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TMPDIR": str(tmp_path)}
    env |= extra_env  # TMPDIR: where a traceback goes when there is no workdir yet
    return subprocess.run(
        [sys.executable, "-m", "gkd_jax.train", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def traceback_file(stderr: str) -> pathlib.Path:
    (path,) = re.findall(r"\(the traceback: (\S+); GKD_TRACEBACK=1 prints it here\)", stderr)
    return pathlib.Path(path)


def test_offline_hub_model_is_one_short_message(tmp_path):
    workdir = tmp_path / "run"
    proc = train(tmp_path, "--config=configs/xsum.py", f"--workdir={workdir}")
    err = proc.stderr
    assert proc.returncode == cli.EXIT_STATUS, err
    assert err.startswith("error: 'google/t5-small-lm-adapt' is not a local directory"), err
    assert "Pass a local directory" in " ".join(err.split()) and "Traceback" not in err
    assert len(err.splitlines()) < SHORT, err
    saved = traceback_file(err)
    assert saved == workdir / cli.TRACEBACK_FILE  # the workdir exists by then
    assert "Traceback (most recent call last)" in saved.read_text()
    assert "LocalEntryNotFoundError" in saved.read_text()


def test_gkd_traceback_shows_the_traceback(tmp_path):
    proc = train(tmp_path, "--config=configs/xsum.py", f"--workdir={tmp_path / 'run'}",
                 GKD_TRACEBACK="1")  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "FileNotFoundError: 'google/t5-small-lm-adapt' is not a local" in proc.stderr


def test_a_bad_config_value_is_one_line(tmp_path):
    proc = train(tmp_path, "--config=configs/arith.py", f"--workdir={tmp_path / 'run'}",
                 "--config.gkd.lmbda=2")  # fmt: skip
    assert proc.returncode == cli.EXIT_STATUS, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "error: config.gkd.lmbda=2.0 is invalid: must be in [0, 1]", proc.stderr
    assert len(lines) < SHORT and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=configs/no_such.py"],
         "error: --config=configs/no_such.py: no config file at configs/no_such.py"),
        (["--config=configs/xsum.py:bogus"],
         "error: flag --config=configs/xsum.py:bogus: config arg part 'bogus': must be one of"),
        (["--config=configs/arith.py", "--config.gkd.lmbdaa=1"],
         "error: --config.gkd.lmbdaa=1: the config has no field 'lmbdaa'"),
    ],
)  # fmt: skip
def test_a_bad_config_flag_is_its_message(tmp_path, args, message):
    """ml_collections would defer the missing file to a message that names none, print the
    config's traceback for its `:arg`, and raise out of its override lookup for a typo."""
    proc = train(tmp_path, *args, f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == cli.EXIT_STATUS, proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.splitlines()) < SHORT and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- in process
def raised(fn) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("nothing raised")


def test_which_failures_are_the_users():
    def our_value_error():
        raise ValueError("config.x=1 is invalid")  # this file is no installed library's

    assert cli.user_fixable(raised(lambda: resolve_model_dir("/no/such/model/dir")))
    assert cli.user_fixable(raised(our_value_error))
    assert cli.user_fixable(flags.IllegalFlagValueError("flag --x=y: not a number"))
    assert not cli.user_fixable(raised(lambda: json.loads("{")))  # a library's ValueError: a bug
    assert not cli.user_fixable(raised(lambda: {}["key"]))
    assert not cli.user_fixable(raised(lambda: 1 / 0))


def test_run_reports_a_users_failure_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def main():
        raise ValueError("config.gkd.lmbda=2.0 is invalid: " + "must be in [0, 1] " * 10)

    with pytest.raises(SystemExit) as stop:
        cli.run(main, "train")
    assert stop.value.code == cli.EXIT_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: config.gkd.lmbda=2.0 is invalid")
    assert all(len(line) <= cli.WIDTH for line in err.splitlines()[:-1])  # wrapped
    saved = traceback_file(err)
    assert saved.parent == tmp_path and saved.name.startswith("gkd_jax-train-")
    assert "in main" in saved.read_text()


def test_run_lets_a_bug_show_its_traceback(monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(KeyError):
        cli.run(lambda: {}["key"], "train")
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(FileNotFoundError):  # a user's failure, shown whole when asked
        cli.run(lambda: resolve_model_dir("/no/such/model/dir"), "train")
