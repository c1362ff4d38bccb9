"""kneelib.fingerprint: a chapter is re-executed only when what it depends on changed."""
from __future__ import annotations

from pathlib import Path

import nbformat

import kneelib
from kneelib.fingerprint import (chapter_fingerprint, is_up_to_date, kneelib_import_closure, notebook_sources,
                                 read_record)
from kneelib.runner import execution_table, run_notebook


def _notebook(path, code="x = factor * 2\nprint(x)", extra_markdown=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny")]
    params = nbformat.v4.new_code_cell("factor = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, nbformat.v4.new_code_cell(code)]
    if extra_markdown:
        nb.cells.append(nbformat.v4.new_markdown_cell(extra_markdown))
    nbformat.write(nb, path)
    return path


def _relative(paths):
    """Paths relative to the folder holding the package (a checkout may itself be named kneelib)."""
    root = Path(kneelib.__file__).resolve().parent.parent
    return {Path(p).resolve().relative_to(root).as_posix() for p in paths}


def test_closure_follows_imports_inside_functions_and_adds_packages_and_data():
    closure = _relative(kneelib_import_closure(["from kneelib.train.grading_evaluation import table3"]))
    # imported at module level, inside head_agreement (lazily), and the enclosing packages
    assert {"kneelib/train/grading_evaluation.py", "kneelib/stats/ordinal.py", "kneelib/stats/agreement.py",
            "kneelib/__init__.py", "kneelib/train/__init__.py", "kneelib/stats/__init__.py"} <= closure
    assert "kneelib/synth/mri.py" not in closure and "kneelib/qmri/relaxometry.py" not in closure
    synth = _relative(kneelib_import_closure(["import kneelib.synth.anatomy"]))
    assert "kneelib/synth/data/knee_template.npz" in synth


def test_markdown_and_outputs_do_not_count_but_code_params_and_data_do(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("1")
    source = _notebook(tmp_path / "tiny.ipynb")
    base = chapter_fingerprint(source, {"factor": 2}, data_root=data)
    assert chapter_fingerprint(source, {"factor": 2}, data_root=data) == base
    assert chapter_fingerprint(source, {"factor": 3}, data_root=data) != base
    # outputs are not sources
    nb = nbformat.read(source, as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="4\n")]
    nbformat.write(nb, source)
    assert chapter_fingerprint(source, {"factor": 2}, data_root=data) == base
    _notebook(source, code="x = factor * 3\nprint(x)")
    assert chapter_fingerprint(source, {"factor": 2}, data_root=data) != base
    _notebook(source)
    (data / "b.txt").write_text("new input")
    assert chapter_fingerprint(source, {"factor": 2}, data_root=data) != base
    assert len(notebook_sources(source)) == 3


def test_a_successful_run_records_its_fingerprint_and_the_status_page_lists_it(tmp_path):
    source = _notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    run_notebook(source, params={"factor": 2}, out_dir=out, progress=False)
    record = read_record(out, "tiny")
    assert record["params"] == {"factor": 2} and record["params_label"] == "dict"
    assert is_up_to_date(out, "tiny", chapter_fingerprint(source, {"factor": 2}))
    assert not is_up_to_date(out, "tiny", chapter_fingerprint(source, {"factor": 5}))
    _notebook(source, code="x = factor * 3\nprint(x)")
    assert not is_up_to_date(out, "tiny", chapter_fingerprint(source, {"factor": 2}))
    table = "\n".join(execution_table(out))
    assert "| `tiny` | dict |" in table and record["code_version"] in table
    # no executed notebook: never up to date, whatever the record says
    (out / "tiny.ipynb").unlink()
    assert not is_up_to_date(out, "tiny", record["fingerprint"])
