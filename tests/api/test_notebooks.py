"""The example notebooks run end to end (shrunk through their "parameters" cell), and they and
their Markdown copies in docs/examples are what examples/make_notebooks.py writes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
SHRUNK = {"classifier": "EPOCHS = 1", "dataset": "EPOCHS, EVAL_EPOCHS = 1, 5", "lm": "EPOCHS, ROWS = 1, 200", "diffusion": "EPOCHS = 1"}


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "examples" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_and_their_markdown_copies_are_up_to_date() -> None:
    stale = [str(path.relative_to(ROOT)) for path, text in _maker().outputs().items() if not path.is_file() or path.read_text() != text]
    assert not stale, f"run `.venv/bin/python examples/make_notebooks.py` to refresh {stale}"


@pytest.mark.parametrize("name", sorted(SHRUNK))
def test_the_example_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(ROOT / "examples" / f"{name}.ipynb", as_version=4)
    parameters = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = SHRUNK[name]
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors
    last = nb.cells[-1] if nb.cells[-1].cell_type == "code" else nb.cells[-2]
    assert last.outputs, "the last cell shows a result"
    assert (tmp_path / "runs").is_dir()
