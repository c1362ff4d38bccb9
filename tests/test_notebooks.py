"""Every chapter notebook executes at ``smoke`` parameters through kneelib's runner.

Parametrised over ``notebooks/*.ipynb``: a chapter added later is tested without
editing this file. The executed copies go to the session's scratch book, which the
book test then builds (see ``conftest.py``).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from kneelib.runner import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke(notebook, smoke_book_dir):
    executed_dir = smoke_book_dir / "_executed"
    executed = run_notebook(notebook.stem, params="smoke", out_dir=executed_dir, progress=False)

    nb = nbformat.read(executed, as_version=4)
    errors = [(i, o.get("ename"), o.get("evalue")) for i, cell in enumerate(nb.cells)
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], f"{notebook.name}: error outputs {errors}"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1, f"{notebook.name}: papermill did not inject the smoke parameters"
    log = (executed_dir / "run_log.csv").read_text().splitlines()
    assert any(line.split(",")[1:4] == [notebook.stem, "smoke", "ok"] for line in log[1:]), log


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"
