"""The notebooks: quickstart runs top to bottom (smoke size, its pip cell skipped) in a real
Jupyter kernel; paper_xsum (real checkpoints, TPU VM) is only checked to be a valid notebook
whose code parses."""

import ast
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def code_without_magics(cell) -> str:
    # IPython shell escapes (`!cmd`, continued by a trailing backslash) and magics (`%x`) are
    # not Python; blank them, keep the rest.
    out, in_shell = [], False
    for line in cell.source.splitlines():
        in_shell = in_shell or line.lstrip().startswith(("!", "%"))
        out.append("" if in_shell else line)
        in_shell = in_shell and line.endswith("\\")
    return "\n".join(out)


# ~30 s of CPU (compiling the sampler, the step and two evaluations): in the default run, so
# CI executes the notebook and it cannot rot.
def test_quickstart_runs_and_reports_before_and_after(tmp_path, monkeypatch):
    monkeypatch.setenv("GKD_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("GKD_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the PNG
    nb = nbformat.read(os.path.join(NOTEBOOKS, "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()  # fmt: skip
    with open(tmp_path / "run-smoke" / "results.json") as f:
        results = json.load(f)
    assert results["steps"] == 8
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1
    table = markdown[0]
    for key, label in [("teacher", "teacher"), ("start", "student before (SFT)"),
                       ("final", "student after GKD")]:  # fmt: skip
        assert f"| {label} | {100 * results['scores'][key]:.1f}% |" in table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the learning curves


def test_paper_xsum_is_a_valid_notebook_whose_code_parses():
    nb = nbformat.read(os.path.join(NOTEBOOKS, "paper_xsum.ipynb"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        ast.parse(code_without_magics(cell))
