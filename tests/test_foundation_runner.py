"""kneelib.runner: parameters, execution with run log, failing-cell report, toc, status table."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import nbformat
import pytest
import yaml

from kneelib.report import Comparison, save_metrics
from kneelib.runner import (NotebookExecutionError, resolve_params, run_notebook, toc_notebooks,
                            toc_pages, write_status_table)


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny")]
    params = nbformat.v4.new_code_cell("factor = 1\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def test_resolve_params_named_set_and_yaml(tmp_path, repo_root):
    values, label = resolve_params("cohort", "smoke")
    assert label == "smoke"
    assert values == yaml.safe_load((repo_root / "params/cohort/smoke.yaml").read_text())
    custom = tmp_path / "mine.yaml"
    custom.write_text("seed: 7\n")
    assert resolve_params("cohort", custom) == ({"seed": 7}, str(custom))
    assert resolve_params("cohort", {"seed": 3}) == ({"seed": 3}, "dict")


def test_resolve_params_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="cohort"):
        resolve_params("cohort", tmp_path / "absent.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        resolve_params("cohort", listed)
    with pytest.raises(ValueError, match="smoke"):
        resolve_params("cohort", "fast")


def test_unknown_notebook_is_named():
    with pytest.raises(FileNotFoundError, match="no notebook 'nope'.*cohort"):
        run_notebook("nope", params="smoke")


def test_run_records_wall_time_and_peak_memory(tmp_path):
    source = _notebook(tmp_path / "tiny.ipynb",
                       "import time\nimport numpy as np\nblock = np.ones((2000, 2000 * factor))\n"
                       "time.sleep(0.6)  # several memory samples\nprint(block.sum())")
    out = run_notebook(source, params={"factor": 2}, out_dir=tmp_path / "out", progress=False)
    nb = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs
                      if o.get("output_type") == "stream" and o.get("name") == "stdout")
    assert printed.strip() == str(float(2000 * 4000))
    # the defaults cell is hidden in the book; the injected values are shown
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["parameters", "remove-cell"] in tags and ["injected-parameters"] in tags
    rows = list(csv.DictReader((tmp_path / "out" / "run_log.csv").open()))
    assert [(r["notebook"], r["params"], r["status"]) for r in rows] == [("tiny", "dict", "ok")]
    assert float(rows[0]["wall_s"]) > 0
    # the kernel held a 64 MB array: its peak resident memory shows it
    assert float(rows[0]["peak_rss_mb"]) > 64


def test_failing_cell_is_named(tmp_path):
    source = _notebook(tmp_path / "broken.ipynb", "x = 1",
                       "# step two: divide\nif fail:\n    raise ZeroDivisionError('planted failure')")
    with pytest.raises(NotebookExecutionError) as caught:
        run_notebook(source, params={"fail": True}, out_dir=tmp_path / "out", progress=False)
    error = caught.value
    assert error.cell_index == 3  # markdown, parameters, x = 1, failing cell
    assert error.ename == "ZeroDivisionError" and "planted failure" in error.evalue
    message = str(error)
    assert "broken" in message and "cell 3" in message and "# step two: divide" in message
    rows = list(csv.DictReader((tmp_path / "out" / "run_log.csv").open()))
    assert rows[-1]["status"] == "failed"


def test_toc_lists_cohort_and_status(repo_root):
    assert "cohort" in toc_notebooks(repo_root / "book" / "_toc.yml")
    pages = toc_pages(repo_root / "book" / "_toc.yml")
    assert pages[0] == "intro" and "status" in pages and "_executed/cohort" in pages


def test_status_table(tmp_path, repo_root):
    metrics = tmp_path / "metrics"
    save_metrics("siamese_pain", [Comparison("siamese_pain", "ROC AUC, Model A", 0.808, 0.71,
                                             ci_low=0.65, ci_high=0.77, source="Fig. 4A",
                                             data="synthetic smoke, n=8")], out_dir=metrics)
    save_metrics("extra_chapter", [Comparison("extra_chapter", "a count", 10, None)],
                 out_dir=metrics)
    out = write_status_table(metrics, tmp_path / "status_table.md",
                             repo_root / "book" / "published.yml")
    text = out.read_text()
    start = text.index("Siamese")
    siamese = text[start:text.index("\n## ", start)]
    assert "| ROC AUC, Model A | 0.808 | 0.71 | [0.65, 0.77] | Fig. 4A | synthetic smoke, n=8 |" in siamese
    assert "not yet reproduced" not in siamese.lower()
    # a study without metrics shows its headline published numbers
    grading = text[text.index("KL and OARSI grading"):]
    assert "**Not yet reproduced**" in grading and "| 0.82 | not yet reproduced |" in grading
    assert "## Other chapters" in text and "| a count | 10 | not run |" in text
    # headlines of chapters name their value under `values:` instead of restating it
    assert "| 0.79 / 0.84 / 0.94 | not yet reproduced |" in grading


def test_headline_refs_resolve_and_a_wrong_ref_is_named():
    import pytest

    from kneelib.runner import headline_value

    values = {"a": {"auc": {"Model A": 0.808}, "k": 0.5}}
    assert headline_value({"quantity": "q", "ref": "a/auc/Model A"}, values) == "0.808"
    assert headline_value({"quantity": "q", "ref": ["a/auc/Model A", "a/k"]}, values) == "0.808 / 0.5"
    assert headline_value({"quantity": "q", "published": "14%"}, values) == "14%"
    with pytest.raises(KeyError, match="a/auc/Model B"):
        headline_value({"quantity": "q", "ref": "a/auc/Model B"}, values)


def test_published_yml_headlines_of_chapters_restate_no_value(repo_root):
    """A study with a chapter compares against `values:`; its headline only refers to them."""
    import yaml

    from kneelib.runner import headline_value

    document = yaml.safe_load((repo_root / "book" / "published.yml").read_text())
    for study in document["studies"]:
        for item in study["headline"]:
            if any(nb in document["values"] for nb in study["notebooks"]) and isinstance(
                    item.get("published"), (int, float)):
                raise AssertionError(f"{study['key']}: headline {item['quantity']!r} restates "
                                     f"{item['published']}; use `ref:`")
            headline_value(item, document["values"])  # every ref resolves


def test_cli_help_and_bad_notebook(repo_root):
    ok = subprocess.run([sys.executable, "-m", "kneelib", "run", "--help"], capture_output=True,
                        text=True, cwd=repo_root)
    assert ok.returncode == 0 and "--params" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "kneelib", "run", "nope", "--params", "smoke"],
                         capture_output=True, text=True, cwd=repo_root)
    assert bad.returncode != 0 and "no notebook 'nope'" in bad.stderr
