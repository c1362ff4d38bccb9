"""What a chapter's execution depends on, hashed: re-execute a chapter only when it changed.

``make book`` executes every chapter at ``default`` (tens of minutes). A second build with
nothing changed should reuse the executed notebooks, and a build after a change should
re-execute exactly the chapters it touches. A chapter's result depends on

- its notebook (the sources of its cells; outputs and metadata do not count),
- its parameter values,
- the ``kneelib`` code it imports: the import closure of the notebook inside the package,
  followed through every ``import`` statement of every module reached (also those inside
  functions, which run lazily), with each package's ``__init__`` and the package data
  (non-Python files beside a module or in its folder's ``data`` subfolder, e.g. the knee
  template of :mod:`kneelib.synth`),
- ``book/published.yml`` (chapters print the published numbers beside theirs),
- its input data: the listing (relative path and size) of ``$KNEELIB_DATA``. The synthetic
  cohorts are functions of the generator code (in the closure) and the parameters.

:func:`chapter_fingerprint` hashes all of these (SHA-256); :func:`write_record` stores it
beside the executed notebook with the parameters, the code version and the time, which the
book's status page lists (:func:`kneelib.runner.write_status_table`). Jupyter Book's own
cache (jupyter-cache) keys on the notebook's code cells only, so a change to ``kneelib``
or to the data would not re-execute a chapter; hence this module.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

from kneelib.config import repo_root

__all__ = ["FINGERPRINT_SUFFIX", "notebook_sources", "kneelib_import_closure", "data_listing",
           "chapter_fingerprint", "code_version", "write_record", "read_record", "is_up_to_date"]

#: ``<executed_dir>/<chapter><FINGERPRINT_SUFFIX>`` holds the record of the last successful run.
FINGERPRINT_SUFFIX = ".execution.json"
_PACKAGE = "kneelib"


def notebook_sources(path: str | os.PathLike) -> list[str]:
    """The cell sources of a notebook (code and markdown; no outputs, no metadata)."""
    import nbformat

    nb = nbformat.read(Path(path), as_version=4)
    return [f"{cell.cell_type}:{cell.source}" for cell in nb.cells]


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """File of ``kneelib.a.b``: ``kneelib/a/b.py`` or ``kneelib/a/b/__init__.py``; None if neither."""
    parts = name.split(".")
    if parts[0] != _PACKAGE:
        return None
    base = _package_dir().joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(source: str, module: str | None = None, is_package: bool = False) -> set[str]:
    """Absolute names of every ``kneelib`` module an ``import`` in ``source`` may load."""
    try:
        trees = [ast.parse(source)]
    except SyntaxError:  # a notebook cell with shell magics: keep the lines that parse
        trees = []
        for line in source.splitlines():
            try:
                trees.append(ast.parse(line.strip()))
            except SyntaxError:
                continue
    names: set[str] = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and module:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == _PACKAGE or n.startswith(_PACKAGE + ".")}


def _package_data(folder: Path) -> set[Path]:
    """Non-Python files beside a module and in its folder's ``data`` subfolder (package data)."""
    def is_data(p: Path) -> bool:
        return p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts

    found = {p for p in folder.iterdir() if is_data(p)}
    if (folder / "data").is_dir() and not (folder / "data" / "__init__.py").is_file():
        found |= {p for p in (folder / "data").rglob("*") if is_data(p)}
    return found


def kneelib_import_closure(sources: list[str]) -> list[Path]:
    """Every ``kneelib`` file that running the code in ``sources`` can import (sorted paths).

    ``sources``: Python sources, or :func:`notebook_sources` entries (markdown cells skipped).

    Follows imports recursively, including those inside functions; adds the
    ``__init__.py`` of every enclosing package (Python runs them first) and the package
    data of every module reached (:func:`_package_data`).
    """
    code = [s.removeprefix("code:") for s in sources if not s.startswith(("markdown:", "raw:"))]
    pending = set().union(*(_imported_names(s) for s in code)) if code else set()
    seen: set[str] = set()
    files: set[Path] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for depth in range(1, len(parts)):  # enclosing packages
            pending.add(".".join(parts[:depth]))
        path = _module_file(name)
        if path is None:  # an attribute (class, function) of its parent module
            continue
        files.add(path)
        files.update(_package_data(path.parent))
        if path.suffix == ".py":
            pending |= _imported_names(path.read_text(), name, path.name == "__init__.py") - seen
    return sorted(files)


def data_listing(root: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every file under ``root`` (default ``$KNEELIB_DATA``), sorted."""
    from kneelib.config import data_root

    root = Path(root) if root is not None else data_root()
    if not root.is_dir():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def chapter_fingerprint(notebook: str | os.PathLike, params: dict,
                        published: str | os.PathLike | None = None,
                        data_root: str | os.PathLike | None = None, listing: list | None = None) -> str:
    """SHA-256 of everything a chapter's execution depends on (see the module docstring).

    ``listing``: :func:`data_listing` already taken (a book build lists the data once for
    every chapter instead of once per chapter).
    """
    digest = hashlib.sha256()

    def add(label: str, payload: bytes) -> None:
        digest.update(label.encode() + b"\0" + hashlib.sha256(payload).digest())

    sources = notebook_sources(notebook)
    add("notebook", json.dumps(sources).encode())
    add("params", json.dumps(params, sort_keys=True, default=str).encode())
    package_root = _package_dir().parent
    for path in kneelib_import_closure(sources):
        add(f"code:{path.relative_to(package_root)}", path.read_bytes())
    published = Path(published) if published is not None else repo_root() / "book" / "published.yml"
    add("published", published.read_bytes() if published.is_file() else b"")
    add("data", json.dumps(listing if listing is not None else data_listing(data_root)).encode())
    return digest.hexdigest()


def code_version() -> str:
    """``git describe --always --dirty`` of the checkout, or ``"unknown"`` outside git."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=str(repo_root()),
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def write_record(executed_dir: str | os.PathLike, chapter: str, fingerprint: str, params_label: str,
                 params: dict, wall_s: float) -> Path:
    """Store the record of a successful run beside the executed notebook (temp name, then rename)."""
    path = Path(executed_dir) / f"{chapter}{FINGERPRINT_SUFFIX}"
    record = {"chapter": chapter, "fingerprint": fingerprint, "params_label": params_label,
              "params": params, "code_version": code_version(), "wall_s": round(float(wall_s), 1),
              "executed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(temporary, path)
    return path


def read_record(executed_dir: str | os.PathLike, chapter: str) -> dict | None:
    """The stored record of ``chapter``, or None when absent or unreadable."""
    path = Path(executed_dir) / f"{chapter}{FINGERPRINT_SUFFIX}"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(executed_dir: str | os.PathLike, chapter: str, fingerprint: str) -> bool:
    """Whether the executed notebook exists and its record carries ``fingerprint``."""
    record = read_record(executed_dir, chapter)
    return (Path(executed_dir) / f"{chapter}.ipynb").is_file() and record is not None \
        and record.get("fingerprint") == fingerprint
