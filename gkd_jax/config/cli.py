"""How every command starts and ends: `run_app(main)` (absl commands) or `run(main)`.

A failure the user can fix from its message (a config value, a flag, a missing file or model,
the hub offline) ends in `error: <message>` on stderr and exit status 2; its traceback goes to a
file the message names (WORKDIR/last_error.txt when --workdir exists, else a temporary file),
or to the console with GKD_TRACEBACK=1. Any other exception is a bug: its traceback shows.

Which failures are the user's (`user_fixable`): a missing file or directory, or one not
allowed; the Hugging Face hub's errors; and a ValueError raised by this package or a config
file (our checks say what to change), not one a library raised (that is our bug).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from gkd_jax.parallel import backends

TRACEBACK_ENV = "GKD_TRACEBACK"
EXIT_STATUS = 2
WIDTH = 100
TRACEBACK_FILE = "last_error.txt"
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
HUB_PACKAGE = "huggingface_hub"
FLAGS_HINT = "Pass --helpshort or --helpfull to see help on flags."
HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "h", "?")
CONFIG_FILE_ERROR = "Error whilst parsing config file"  # ml_collections' words
OVERRIDE_LOOKUP = os.path.join("config_flags", "config_path.py")  # where it resolves overrides
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB_DIRS = tuple(
    os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")
)
PACKAGE_ROOTS = ("site-packages", "dist-packages")  # any environment's, the user's own included


class ConfigFileError(ValueError):
    """A config file's get_config refused its `:arg` (or failed): absl's message for it holds
    the config's whole traceback, this one its last line (the traceback goes to the file)."""


def raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is this package's or a file outside
    the installed libraries (a config file): there a ValueError is a message for the user."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    path = os.path.abspath(frames[-1].filename)
    if path.startswith(PACKAGE_DIR + os.sep):  # installed or not
        return True
    library = path.startswith(STDLIB_DIRS) or any(p in PACKAGE_ROOTS for p in path.split(os.sep))
    return not (frames[-1].filename.startswith("<") or library)


def user_fixable(error: BaseException) -> bool:
    if isinstance(error, (*PATH_ERRORS, flags.Error)):
        return True
    if any(c.__module__.split(".")[0] == HUB_PACKAGE for c in type(error).__mro__):
        return True
    return isinstance(error, ValueError) and raised_by_us(error)


def _innermost(error: BaseException) -> BaseException:
    """The first exception of `error`'s chain (a `raise ... from None` ends it there)."""
    while True:
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is None:
            return error
        error = cause


def _check_config_files(argv: Sequence[str]) -> None:
    """A missing --config file, said at once: ml_collections defers it to the first use of the
    config, with a message that names no file."""
    names = [n for n in flags.FLAGS if isinstance(flags.FLAGS[n].parser, ConfigFileFlagParser)]
    for i, arg in enumerate(argv):
        for name in names:
            if arg == f"--{name}" and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(f"--{name}="):
                value = arg.split("=", 1)[1]
            else:
                continue
            path = value.split(":", 1)[0]
            if not os.path.isfile(path):
                raise flags.IllegalFlagValueError(f"--{name}={value}: no config file at {path}")


def _unknown_field(error: BaseException, argv: Sequence[str]) -> str:
    """The message for an override of a field the config lacks (ml_collections: KeyError)."""
    name = str(_innermost(error)).strip("\"'")
    given = [a for a in argv if a.startswith("--") and name in a.split("=", 1)[0].split(".")[1:]]
    return f"{', '.join(given) or 'a --config override'}: the config has no field {name!r}"


def _help_asked(argv: Sequence[str]) -> bool:
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    return any(a.lstrip("-").split("=")[0] in HELP_FLAGS for a in args if a.startswith("-"))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's flags_parser), failing with an exception (run reports
    it) instead of printing absl's message, which for a config file's error is a traceback;
    --help exits 0 (absl: 1), as a command's help does elsewhere."""
    _check_config_files(argv)
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:
        if e.code == 1 and _help_asked(argv):
            sys.exit(0)
        raise
    except flags.Error as e:
        if CONFIG_FILE_ERROR not in str(e):
            raise
        flag = str(e).split(f": {CONFIG_FILE_ERROR}", 1)[0]
        raise ConfigFileError(f"{flag}: {_innermost(e)}") from e
    except (AttributeError, KeyError) as e:
        frames = traceback.extract_tb(e.__traceback__)
        if not any(f.filename.endswith(OVERRIDE_LOOKUP) for f in frames):
            raise  # not an override's field: a config file's bug
        raise flags.IllegalFlagValueError(_unknown_field(e, argv)) from e


def _traceback_path(command: str) -> str:
    """WORKDIR/last_error.txt when the command's --workdir exists, else a new temporary file."""
    workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
    if workdir and flags.FLAGS.is_parsed() and os.path.isdir(workdir):
        return os.path.join(workdir, TRACEBACK_FILE)
    fd, path = tempfile.mkstemp(prefix=f"gkd_jax-{command}-", suffix=".txt")
    os.close(fd)
    return path


def message_block(error: BaseException) -> str:
    """`error: <message>`, wrapped to WIDTH columns (continuation lines indented)."""
    lines = []
    for i, line in enumerate(str(error).strip().splitlines() or [type(error).__name__]):
        lines += textwrap.wrap(
            ("error: " if i == 0 else "  ") + line, WIDTH, subsequent_indent="  ",
            break_long_words=False, break_on_hyphens=False,
        ) or [""]  # fmt: skip
    return "\n".join(lines)


def report(error: BaseException, command: str) -> None:
    """Print the user's error in one short block on stderr; its traceback to a file."""
    lines = [message_block(error)]
    if isinstance(error, flags.Error):  # absl's parser: nothing in its traceback to read
        lines.append(FLAGS_HINT)
    else:
        path = _traceback_path(command)
        try:
            with open(path, "w") as f:
                f.write("".join(traceback.format_exception(error)))
            lines.append(f"(the traceback: {path}; {TRACEBACK_ENV}=1 prints it here)")
        except OSError:
            lines.append(f"({TRACEBACK_ENV}=1 prints the traceback)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(main: Callable[[], object], command: str | None = None) -> None:
    """Run a command's `main()`: quiet on a host without a TPU (parallel/backends.py), and a
    user-fixable failure reported as the module docstring says (SystemExit passes)."""
    command = command or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    backends.skip_absent_tpu()
    try:
        main()
    except Exception as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or not user_fixable(e):
            raise
        report(e, command)
        sys.exit(EXIT_STATUS)


def run_app(main: Callable[[list[str]], object], command: str | None = None) -> None:
    """`run` for an absl command: app.run(main), with parse_flags as its flag parser."""
    run(lambda: app.run(main, flags_parser=parse_flags), command)
