"""Every chapter notebook executes at ``smoke`` parameters through kneelib's runner.

Parametrised over ``notebooks/*.ipynb``: a chapter added later is tested without
editing this file. The executed copies go to the session's scratch book, which the
book test then builds (see ``conftest.py``).
"""
from __future__ import annotations

import json
import os
import sys
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
    _assert_clean_outputs(nb, notebook.name)
    _assert_metrics_complete(executed_dir / f"{notebook.stem}.metrics.json", notebook.name)


def _local_paths() -> list[str]:
    """Strings that reveal the builder's machine: the checkout, the venv, the home folder."""
    paths = {str(Path(__file__).resolve().parent.parent), sys.prefix, str(Path.home())}
    return sorted(p for p in paths if len(p) > 1) + ["site-packages"]


def _output_texts(cell):
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            yield output.get("name"), output.get("text", "")
        for mime, data in (output.get("data") or {}).items():
            if mime.startswith("text/"):
                yield mime, data if isinstance(data, str) else "".join(data)


def _assert_clean_outputs(nb, name):
    """A reader sees no stderr block (warnings) and no path of the machine that built the page."""
    stderr, leaks, numpy_glue = [], [], []
    for index, cell in enumerate(nb.cells):
        for kind, text in _output_texts(cell):
            if kind == "stderr" and text.strip() and not _is_progress_bar(text):
                stderr.append((index, text.strip().splitlines()[0][:160]))
            leaks += [(index, path) for path in _local_paths() if path in text]
        for output in cell.get("outputs", []):
            record = (output.get("data") or {}).get("application/papermill.record/text/plain", "")
            if isinstance(record, str) and record.startswith(("np.", "array(")):
                numpy_glue.append((index, record[:40]))
    assert stderr == [], f"{name}: stderr output (warnings) in cells {stderr}"
    assert leaks == [], f"{name}: local paths in outputs {leaks}"
    # a glued numpy scalar is recorded as 'np.float64(...)' and a formatted {glue:text} of it is empty
    assert numpy_glue == [], f"{name}: glued numpy values (wrap them in float/int) {numpy_glue}"


def _is_progress_bar(text: str) -> bool:
    """tqdm/fastprogress bars write to stderr; they are progress, not warnings."""
    lines = [l for l in text.replace("\r", "\n").splitlines() if l.strip()]
    return bool(lines) and all(("it/s" in l or "s/it" in l or "%|" in l or "/s]" in l) for l in lines)


def _assert_metrics_complete(path: Path, name):
    """The chapter saved its metrics, and every published quantity has a reproduced value."""
    assert path.is_file(), f"{name}: no metrics file {path.name} (call kneelib.report.save_metrics)"
    payload = json.loads(path.read_text())
    comparisons = payload.get("comparisons", [])
    assert comparisons, f"{name}: {path.name} holds no comparisons"
    missing = [c["quantity"] for c in comparisons
               if c.get("published") not in (None, "") and c.get("reproduced") is None]
    assert missing == [], f"{name}: published quantities without a reproduced value: {missing}"


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"
