"""The package's import graph, read from the source (nothing is imported): imports go one way
(no circle, lazy imports inside functions included), the data modules never reach the models,
no module outgrows one sitting (~650 lines) and no function one screenful (80 lines)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gkd_jax"
MAX_LINES = 650
# Functions, methods and nested functions, lines from `def` to the last line of the body.
MAX_FUNCTION_LINES = 80
FUNCTION_DIRS = ("gkd_jax", "launch", "configs", "benchmarks")
# Declarative tables, read as a list rather than as a story: every config field with its comment.
LONG_FUNCTIONS_ALLOWED = {("gkd_jax/config/defaults.py", "base_config")}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: pathlib.Path) -> set[str]:
    """The gkd_jax modules `name` imports anywhere in its file: `from gkd_jax.x import y` is
    gkd_jax.x.y when that is a module, else gkd_jax.x."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_graph_is_read():
    assert len(MODULES) > 30
    assert "gkd_jax.training.step" in GRAPH["gkd_jax.training.trainer"]
    assert "gkd_jax.data.task_types" in GRAPH["gkd_jax.data.tasks"]


def test_no_import_circle():
    circles = sorted(name for name in GRAPH if name in reaches(name))
    assert circles == [], f"modules that import themselves through others: {circles}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("gkd_jax.data")))
def test_data_never_imports_models(name):
    models = sorted(m for m in reaches(name) if m.startswith("gkd_jax.models"))
    assert models == [], f"{name} reaches {models}"


def test_no_module_over_650_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def long_functions() -> list[str]:
    """'file:line name (length lines)' of each function over MAX_FUNCTION_LINES, the allowed
    ones left out."""
    root = PACKAGE.parent
    found = []
    for directory in FUNCTION_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_80_lines():
    long = long_functions()
    assert long == [], (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers):\n"
        + "\n".join(long)
    )


def test_the_allowed_long_functions_exist():
    """The allow-list names real functions: a renamed or moved table is not silently exempt."""
    for rel, name in LONG_FUNCTIONS_ALLOWED:
        tree = ast.parse((PACKAGE.parent / rel).read_text())
        assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, rel


# The top level is the command line; everything else lives in a subpackage by concern.
COMMANDS = {"train", "evaluate", "plan", "teacher_cache", "teacher_replies", "export"}
SUBPACKAGES = {
    "config", "data", "models", "decoding", "objectives", "training", "evaluation", "planning",
    "parallel",
}  # fmt: skip
MAX_COMMAND_LINES = 150


def test_the_top_level_holds_the_commands_and_the_subpackages_only():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules == COMMANDS
    assert packages == SUBPACKAGES


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_thin_and_runnable(name):
    text = (PACKAGE / f"{name}.py").read_text()
    assert 'if __name__ == "__main__":' in text
    assert len(text.splitlines()) <= MAX_COMMAND_LINES, f"{name}.py: move its work to a subpackage"
