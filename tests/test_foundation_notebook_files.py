"""Committed notebooks: paired with a percent-format .py, in sync, without outputs.

Also the chapter conventions: exactly one ``parameters``-tagged cell, parameter sets
``params/<notebook>/{smoke,default,paper}.yaml`` with the same keys, each key a name
of the parameters cell, a thin notebook (<= 200 code lines), and every notebook listed
in ``book/_toc.yml``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from kneelib.runner import PARAM_SETS, toc_notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def _cells(notebook):
    """(type, source, tags) of each cell, as jupytext sees them."""
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
            for c in notebook.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_pair_exists_and_is_in_sync(path):
    paired = path.with_suffix(".py")
    assert paired.is_file(), f"{path.name} has no jupytext pair {paired.name}"
    formats = jupytext.read(path).metadata.get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, f"{path.name}: jupytext formats {formats!r} lack py:percent"
    from_ipynb = _cells(jupytext.read(path))
    from_py = _cells(jupytext.read(paired))
    assert from_ipynb == from_py, (
        f"{path.name} and {paired.name} differ; run `make sync-notebooks` "
        f"(jupytext --sync notebooks/*.ipynb)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert with_outputs == [], (f"{path.name}: cells {with_outputs} carry outputs or execution "
                                f"counts; clear them before committing")


def _parameter_names(path) -> tuple[list, set]:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = set()
    for cell in cells:
        for node in ast.parse(cell.source).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return cells, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_one_parameters_cell_and_three_parameter_sets(path):
    cells, names = _parameter_names(path)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', expected 1"
    keys = {}
    for name in PARAM_SETS:
        file = ROOT / "params" / path.stem / f"{name}.yaml"
        assert file.is_file(), f"missing parameter set {file}"
        values = yaml.safe_load(file.read_text()) or {}
        assert isinstance(values, dict), f"{file} is not a mapping"
        keys[name] = set(values)
    assert keys["smoke"] == keys["default"] == keys["paper"], f"{path.stem}: keys differ {keys}"
    unknown = keys["default"] - names
    assert not unknown, f"{path.stem}: parameter-set keys {sorted(unknown)} are not set in the parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_thin(path):
    nb = nbformat.read(path, as_version=4)
    code_lines = sum(len([l for l in c.source.splitlines() if l.strip() and not l.strip().startswith("#")])
                     for c in nb.cells if c.cell_type == "code")
    assert code_lines <= 200, f"{path.name}: {code_lines} code lines; move logic to kneelib.papers"


def test_every_notebook_is_a_chapter_and_every_chapter_exists():
    chapters = toc_notebooks(ROOT / "book" / "_toc.yml")
    notebooks = {p.stem for p in NOTEBOOKS}
    assert set(chapters) - notebooks == set(), "book/_toc.yml lists chapters without a notebook"
    assert notebooks - set(chapters) == set(), (
        "notebooks missing from book/_toc.yml; add `- file: _executed/<name>` under Chapters")


def _parameters_cell_values(path) -> dict:
    """The literal values the ``parameters`` cell assigns, by name."""
    cells, _ = _parameter_names(path)
    values = {}
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and node.value is not None:
                values[target.id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_equals_default_parameter_set(path):
    """Opening the notebook in Jupyter runs what ``make book`` runs (params/<nb>/default.yaml)."""
    cell = _parameters_cell_values(path)
    default = yaml.safe_load((ROOT / "params" / path.stem / "default.yaml").read_text()) or {}
    assert set(cell) == set(default), (
        f"{path.stem}: parameters cell names {sorted(set(cell) ^ set(default))} differ from default.yaml")
    differing = {k: (cell[k], default[k]) for k in default if cell[k] != default[k]}
    assert not differing, f"{path.stem}: parameters cell != default.yaml for (cell, yaml) {differing}"


_GLUE_OR_CITE = re.compile(r"\{(?:glue|cite)[a-z:]*\}`[^`]*`")
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def _numbers_in(text: str) -> set[str]:
    return set(_DECIMAL.findall(text))


def _published_numbers() -> set[float]:
    """Every number written in book/published.yml (the one source of published values)."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            found.add(round(float(node), 6))
        elif isinstance(node, str):
            found.update(round(float(n), 6) for n in _DECIMAL.findall(node))

    walk(yaml.safe_load((ROOT / "book" / "published.yml").read_text()))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_prose_types_no_computed_number(path):
    """Decimal numbers in a chapter's prose are glued, published, or parameters of the method.

    A decimal number typed into markdown is allowed only when it is a published value
    (``book/published.yml``) or a constant that the notebook's code or parameter sets
    name (a threshold, a pixel size). Anything else is a result typed by hand, which goes
    stale when the code changes: glue it (``{glue:text}`name:.2f```).
    """
    notebook = jupytext.read(path.with_suffix(".py"))
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    params = "\n".join(p.read_text() for p in (ROOT / "params" / path.stem).glob("*.yaml"))
    allowed = {round(float(n), 6) for n in _numbers_in(code + "\n" + params)} | _published_numbers()
    typed = []
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        prose = _GLUE_OR_CITE.sub("", cell.source)
        prose = re.sub(r"\$[^$]*\$", "", prose)  # formulas
        typed += [n for n in sorted(_numbers_in(prose)) if round(float(n), 6) not in allowed]
    assert not typed, (f"{path.stem}: numbers typed into prose that are neither published nor "
                       f"parameters: {typed}; glue computed values")
