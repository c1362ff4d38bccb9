"""Every direct dependency declared in pyproject.toml is imported by kneelib or a notebook.

A declared package nothing imports is dead weight in every install (issue 9, item 21);
distribution names are mapped to the import names they provide with
:func:`importlib.metadata.packages_distributions`. A few packages are used without an
import statement (the Jupyter kernel papermill starts); they are listed with the reason.
"""
from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Declared packages used without being imported, with why.
USED_WITHOUT_IMPORT = {
    "ipykernel": "the Python kernel papermill starts to execute the notebooks",
    "nbclient": "the engine papermill executes notebooks with (pinned with it)",
    "jupytext": "pairs notebooks/*.ipynb with their .py sources (make sync-notebooks; tests/ import it)",
    "pylibjpeg": "pydicom's decoder framework for compressed pixel data (plugins below)",
    "pylibjpeg-libjpeg": "pydicom plugin: JPEG baseline/lossless and JPEG-LS decoding",
    "pylibjpeg-openjpeg": "pydicom plugin: JPEG 2000 decoding",
    "pylibjpeg-rle": "pydicom plugin: fast RLE decoding",
    "pyjpegls": "pydicom's JPEG-LS codec (also encodes, for the compressed-DICOM tests)",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Distribution names of ``[project] dependencies`` (version specifiers dropped)."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [_normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in dependencies]


def imported_top_level(folders=("kneelib", "notebooks")) -> set[str]:
    """Top-level module names imported by any ``.py`` file under ``folders``."""
    names = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def unused_declared(declared, imported, provides) -> list[str]:
    """Declared distributions none of whose import names is in ``imported``."""
    by_distribution = {}
    for module, distributions in provides.items():
        for distribution in distributions:
            by_distribution.setdefault(_normalise(distribution), set()).add(module)
    return [d for d in declared if d not in USED_WITHOUT_IMPORT
            and not (by_distribution.get(d, set()) & imported)]


def test_every_declared_dependency_is_imported():
    declared = declared_distributions()
    provides = packages_distributions()
    installed = {_normalise(d) for ds in provides.values() for d in ds}
    missing = [d for d in declared if d not in installed]
    if missing:
        raise PackageNotFoundError(f"declared but not installed: {missing}")
    unused = unused_declared(declared, imported_top_level(), provides)
    assert unused == [], (f"declared in pyproject.toml but never imported in kneelib/ or notebooks/: {unused}; "
                          "use them or remove them (and their pins in requirements.txt)")


def test_the_check_finds_an_unused_package():
    provides = {"seaborn": ["seaborn"], "sklearn": ["scikit-learn"], "monai": ["monai"]}
    assert unused_declared(["seaborn", "scikit-learn", "monai"], {"seaborn", "sklearn"}, provides) == ["monai"]
