"""Execute the chapter notebooks with papermill and build the Jupyter Book.

Every chapter of the book is a notebook in ``notebooks/`` with parameter sets in
``params/<notebook>/{smoke,default,paper}.yaml``. :func:`run_notebook` executes one
of them with papermill (kernel ``python3``, working directory the repository root)
into ``book/_executed/<notebook>.ipynb``, shows a progress bar, records wall time
and the kernel's peak memory in ``book/_executed/run_log.csv`` and, when a cell
fails, raises :class:`NotebookExecutionError` naming that cell.

:func:`build_book` executes every notebook that ``book/_toc.yml`` lists (entries
``_executed/<notebook>``), regenerates the reproduction-status table from the
``*.metrics.json`` files the notebooks saved (:mod:`kneelib.report`), copies the
MathJax files shipped by ``jupyter-server-mathjax`` into the book so that pages
render math offline, and runs the Jupyter Book 1.x build.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from kneelib.config import repo_root

__all__ = [
    "NotebookExecutionError",
    "RunRecord",
    "PARAM_SETS",
    "notebook_path",
    "resolve_params",
    "run_notebook",
    "toc_notebooks",
    "write_status_table",
    "execution_table",
    "install_mathjax",
    "build_book",
]

#: Named parameter sets every notebook provides in ``params/<notebook>/<name>.yaml``.
PARAM_SETS = ("smoke", "default", "paper")

#: Columns of ``run_log.csv``.
RUN_LOG_COLUMNS = ("finished_utc", "notebook", "params", "status", "wall_s", "peak_rss_mb",
                   "host", "output")

#: Marker of the generated table inside the status page.
STATUS_TABLE_NAME = "status_table.md"


class NotebookExecutionError(RuntimeError):
    """A cell of a notebook raised an exception during papermill execution.

    Attributes
    ----------
    notebook : str
        Notebook name.
    cell_index : int or None
        Index of the failing cell in the *source* notebook ``notebooks/<name>.ipynb``
        (0-based; the cell papermill injects with the parameters is not counted).
    source_head : str
        The first lines of the failing cell.
    ename, evalue : str
        Exception class name and message raised in the kernel.
    executed_path : Path
        The partially executed notebook (with the traceback in the failing cell's output).
    """

    def __init__(self, notebook: str, cell_index: int | None, source_head: str, ename: str,
                 evalue: str, executed_path: Path):
        self.notebook = notebook
        self.cell_index = cell_index
        self.source_head = source_head
        self.ename = ename
        self.evalue = evalue
        self.executed_path = Path(executed_path)
        where = f"cell {cell_index}" if cell_index is not None else "an unidentified cell"
        indented = "\n".join("    " + line for line in source_head.splitlines())
        super().__init__(
            f"notebook '{notebook}' failed in {where}:\n{indented}\n"
            f"  -> {ename}: {evalue}\n"
            f"  full traceback in {executed_path}"
        )


@dataclass
class RunRecord:
    """One line of the run log: how one notebook execution went."""

    notebook: str
    params: str
    status: str
    wall_s: float
    peak_rss_mb: float
    output: Path


# --------------------------------------------------------------------------- params
def notebook_path(name: str | os.PathLike) -> Path:
    """Path of the notebook to run.

    ``name`` is a chapter name (``cohort``, ``cohort.ipynb``: ``notebooks/cohort.ipynb``)
    or the path of an existing ``.ipynb`` file anywhere.

    Raises
    ------
    FileNotFoundError
        If no such notebook exists; the message lists the chapter notebooks.
    """
    given = Path(name)
    if given.suffix == ".ipynb" and given.is_file() and (given.is_absolute() or len(given.parts) > 1):
        return given.resolve()
    stem = given.name.removesuffix(".ipynb").removesuffix(".py")
    path = repo_root() / "notebooks" / f"{stem}.ipynb"
    if not path.is_file():
        known = sorted(p.stem for p in (repo_root() / "notebooks").glob("*.ipynb"))
        raise FileNotFoundError(f"no notebook '{stem}' at {path}; known notebooks: {known}")
    return path


def resolve_params(name: str, params: str | os.PathLike | dict = "default") -> tuple[dict, str]:
    """The parameter dict for a run and a short label of where it came from.

    Parameters
    ----------
    name : str
        Notebook name.
    params : {'smoke', 'default', 'paper'} or path or dict
        A named set (``params/<name>/<set>.yaml``), a YAML file, or the values themselves.

    Returns
    -------
    values : dict
    label : str
        ``"smoke"``, the YAML path, or ``"dict"`` -- what the run log records.

    Raises
    ------
    FileNotFoundError
        The parameter file does not exist.
    ValueError
        The file does not hold a YAML mapping.
    """
    stem = Path(name).name.removesuffix(".ipynb")
    if isinstance(params, dict):
        return dict(params), "dict"
    text = str(params)
    if text in PARAM_SETS:
        path = repo_root() / "params" / stem / f"{text}.yaml"
        label = text
    else:
        path = Path(text).expanduser()
        if not path.is_absolute() and not path.exists():
            path = repo_root() / path
        label = str(path)
        if not path.suffix.lower() in (".yaml", ".yml"):
            raise ValueError(f"--params must be one of {PARAM_SETS} or a .yaml file, got '{text}'")
    if not path.is_file():
        raise FileNotFoundError(f"parameter file for notebook '{stem}' not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"parameter file {path} must hold a mapping of names to values, "
                         f"got {type(values).__name__}")
    return values, label


# --------------------------------------------------------------------------- memory
class _PeakMemory:
    """Poll the resident memory of this process's descendants (the kernel tree).

    The kernel papermill starts is a child of this process; its own workers
    (data loaders, process pools) are its children. The sum of their RSS is sampled
    every ``interval`` seconds in a daemon thread; :attr:`peak_bytes` is the maximum.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kneelib-peak-memory", daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return 0
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _environment(**values: str):
    """Set environment variables for the kernel (it inherits ours), restore afterwards."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _append_run_log(log_path: Path, record: RunRecord) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    new = not log_path.exists()
    with log_path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(RUN_LOG_COLUMNS)
        writer.writerow([
            _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            record.notebook, record.params, record.status, f"{record.wall_s:.2f}",
            f"{record.peak_rss_mb:.1f}", platform.node(), str(record.output),
        ])


def _failing_cell(executed_path: Path, error) -> tuple[int | None, str]:
    """Index (in the source notebook) and first lines of the cell papermill reports."""
    import nbformat

    source = getattr(error, "source", "") or ""
    index = None
    try:
        nb = nbformat.read(executed_path, as_version=4)
        # Papermill adds error-banner cells and the injected parameters cell; skip them
        # so the index is the one the author sees in notebooks/<name>.ipynb.
        position = 0
        for cell in nb.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
                continue
            if cell.get("cell_type") == "code" and any(
                    o.get("output_type") == "error" for o in cell.get("outputs", [])):
                index = position
                source = source or cell.get("source", "")
                break
            position += 1
    except Exception:  # the report must not hide the original error
        pass
    head = "\n".join(source.splitlines()[:4]) or "<source unavailable>"
    return index, head


def run_notebook(name: str, params: str | os.PathLike | dict = "default",
                 out_dir: str | os.PathLike | None = None, progress: bool = True,
                 log_path: str | os.PathLike | None = None, timeout_s: float | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill and return the executed copy.

    Parameters
    ----------
    name : str
        Notebook name (``cohort`` or ``cohort.ipynb``).
    params : {'smoke', 'default', 'paper'}, path or dict, default 'default'
        Parameter set, see :func:`resolve_params`.
    out_dir : path, optional
        Where the executed notebook goes (default ``book/_executed``). The kernel
        gets ``KNEELIB_METRICS_DIR=out_dir`` so the metrics the notebook saves with
        :func:`kneelib.report.save_metrics` land beside it.
    progress : bool, default True
        Show papermill's per-cell progress bar.
    log_path : path, optional
        Run log CSV (default ``<out_dir>/run_log.csv``); one row per execution with
        wall time and the kernel's peak resident memory.
    timeout_s : float, optional
        Per-cell time limit (default none).

    Returns
    -------
    Path
        ``<out_dir>/<name>.ipynb``.

    Raises
    ------
    NotebookExecutionError
        A cell raised; the message names the cell (index, first lines) and the exception.
    FileNotFoundError
        Unknown notebook or parameter file.
    """
    import papermill

    source = notebook_path(name)
    stem = source.stem
    values, label = resolve_params(stem, params)
    out = Path(out_dir) if out_dir is not None else repo_root() / "book" / "_executed"
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / f"{stem}.ipynb"
    log = Path(log_path) if log_path is not None else out / "run_log.csv"

    from kneelib.fingerprint import chapter_fingerprint, write_record

    fingerprint = chapter_fingerprint(source, values)  # of the inputs as they are when the run starts
    started = time.perf_counter()
    status = "ok"
    failure: Exception | None = None
    with _environment(KNEELIB_METRICS_DIR=str(out)), _PeakMemory() as memory:
        try:
            papermill.execute_notebook(
                str(source), str(executed), parameters=values, kernel_name="python3",
                cwd=str(repo_root()), progress_bar=progress, log_output=False,
                execution_timeout=timeout_s,
            )
        except papermill.PapermillExecutionError as error:
            status, failure = "failed", error
        except BaseException:
            wall = time.perf_counter() - started
            _append_run_log(log, RunRecord(stem, label, "aborted", wall,
                                           memory.peak_bytes / 2**20, executed))
            raise
    wall = time.perf_counter() - started
    record = RunRecord(stem, label, status, wall, memory.peak_bytes / 2**20, executed)
    _append_run_log(log, record)
    if failure is not None:
        index, head = _failing_cell(executed, failure)
        raise NotebookExecutionError(stem, index, head, failure.ename, failure.evalue,
                                     executed) from None
    _hide_default_parameters(executed)
    write_record(out, stem, fingerprint, label, values, wall)
    print(f"[kneelib] {stem} ({label}): {wall:.1f} s, kernel peak {record.peak_rss_mb:.0f} MB "
          f"-> {executed}", file=sys.stderr)
    return executed


def _hide_default_parameters(executed: Path) -> None:
    """Tag the notebook's own defaults cell ``remove-cell`` when papermill injected values.

    The book then shows one parameters cell: the values this run actually used.
    """
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    tags_of = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    if not any("injected-parameters" in tags for tags in tags_of):
        return
    changed = False
    for cell, tags in zip(nb.cells, tags_of):
        if "parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
            changed = True
    if changed:
        nbformat.write(nb, executed)


# --------------------------------------------------------------------------- book
def book_dir() -> Path:
    """The book's source folder ``<repo>/book``."""
    return repo_root() / "book"


def _toc_entries(toc_path: str | os.PathLike | None) -> list[dict]:
    """Every mapping of the table of contents, in document order."""
    toc_path = Path(toc_path) if toc_path is not None else book_dir() / "_toc.yml"
    entries: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            entries.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(Path(toc_path).read_text()))
    return entries


def toc_notebooks(toc_path: str | os.PathLike | None = None) -> list[str]:
    """Names of the notebooks the book's table of contents lists, in order.

    A chapter entry is ``file: _executed/<notebook>``; ``notebooks/<notebook>.ipynb``
    is its source.
    """
    return [Path(entry["file"]).name.removesuffix(".ipynb") for entry in _toc_entries(toc_path)
            if isinstance(entry.get("file"), str) and entry["file"].startswith("_executed/")]


def toc_pages(toc_path: str | os.PathLike | None = None) -> list[str]:
    """Every document of the table of contents (root first), without extension."""
    return [str(Path(entry[key]).with_suffix("")) for entry in _toc_entries(toc_path)
            for key in ("root", "file") if isinstance(entry.get(key), str)]


def _format_number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def headline_value(item: dict, values: dict) -> str:
    """The published number of a headline row of ``published.yml``, formatted.

    A row either carries ``published`` (a study without a chapter yet) or ``ref``: one
    path (or a list of paths, shown ``a / b``) into the ``values`` block, so that a
    number a chapter compares against is written down once.

    Raises
    ------
    KeyError
        When a ``ref`` names no value.
    """
    if "ref" not in item:
        return _format_number(item.get("published"))
    refs = item["ref"] if isinstance(item["ref"], list) else [item["ref"]]
    shown = []
    for ref in refs:
        node = values
        for key in str(ref).split("/"):
            if not isinstance(node, dict) or key not in node:
                raise KeyError(f"published.yml: headline {item.get('quantity')!r} refers to {ref!r}, "
                               f"which names no value under `values:`")
            node = node[key]
        shown.append(_format_number(node))
    return " / ".join(shown)


def write_status_table(metrics_dir: str | os.PathLike, out_path: str | os.PathLike,
                       published_path: str | os.PathLike | None = None) -> Path:
    """Write the Markdown body of the reproduction-status page.

    For each study of ``book/published.yml`` (the published headline numbers of the
    four reproduced papers) it lists every comparison the study's notebooks saved in
    ``<metrics_dir>/<notebook>.metrics.json`` -- published next to reproduced, with
    CI, source, data and note -- or, when no notebook has run yet, the headline
    published numbers marked *not yet reproduced*. Metrics of notebooks that belong to
    no listed study follow in their own section.

    Parameters
    ----------
    metrics_dir : path
        Folder of the ``*.metrics.json`` files (see :func:`kneelib.report.load_metrics`).
    out_path : path
        Markdown file to write (included by ``book/status.md``).
    published_path : path, optional
        Default ``book/published.yml``.
    """
    from kneelib.report import load_metrics

    published_path = Path(published_path) if published_path else book_dir() / "published.yml"
    document = yaml.safe_load(Path(published_path).read_text())
    studies = document["studies"]
    published_values = document.get("values") or {}
    metrics = load_metrics(metrics_dir) if Path(metrics_dir).is_dir() else {}
    lines: list[str] = []
    claimed: set[str] = set()

    def comparisons_table(payload: dict) -> list[str]:
        rows = ["| quantity | published | reproduced | 95% CI | source | data | note |",
                "|---|---|---|---|---|---|---|"]
        for comp in payload.get("comparisons", []):
            ci = ""
            if comp.get("ci_low") is not None and comp.get("ci_high") is not None:
                ci = f"[{_format_number(comp['ci_low'])}, {_format_number(comp['ci_high'])}]"
            reproduced = comp.get("reproduced")
            rows.append("| " + " | ".join(_md_cell(x) for x in (
                comp.get("quantity", ""), _format_number(comp.get("published")),
                "not run" if reproduced is None else _format_number(reproduced), ci,
                comp.get("source", ""), comp.get("data", ""), comp.get("note", ""))) + " |")
        return rows

    def params_line(payload: dict) -> str:
        params = payload.get("params") or {}
        shown = ", ".join(f"`{k}={v}`" for k, v in params.items())
        return f"Parameters of this run: {shown}." if shown else ""

    for study in studies:
        lines += [f"## {study['title']}", "",
                  f"Paper: {study['paper']} {{footcite}}`{study['cite']}`", ""]
        ran = [nb for nb in study.get("notebooks", []) if nb in metrics]
        claimed.update(study.get("notebooks", []))
        if not ran:
            chapters = ", ".join(f"`{nb}`" for nb in study.get("notebooks", []))
            lines += [f"**Not yet reproduced** (planned chapter: {chapters}). "
                      "Headline published numbers:", "",
                      "| quantity | published | reproduced | source |", "|---|---|---|---|"]
            for item in study.get("headline", []):
                lines.append(f"| {_md_cell(item['quantity'])} | {headline_value(item, published_values)}"
                             f" | not yet reproduced | {_md_cell(item.get('source', ''))} |")
            lines.append("")
            continue
        for nb in study.get("notebooks", []):
            if nb not in metrics:
                lines += [f"### Chapter `{nb}`", "", "Not run in this build.", ""]
                continue
            lines += [f"### Chapter `{nb}`", "", params_line(metrics[nb]), "",
                      *comparisons_table(metrics[nb]), ""]
    others = [nb for nb in metrics if nb not in claimed]
    if others:
        lines += ["## Other chapters", ""]
        for nb in others:
            lines += [f"### Chapter `{nb}`", "", params_line(metrics[nb]), "",
                      *comparisons_table(metrics[nb]), ""]
    lines += execution_table(metrics_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    return out_path


def execution_table(executed_dir: str | os.PathLike) -> list[str]:
    """Markdown lines: when each chapter was last executed, with which parameters and code version.

    Read from the records :func:`run_notebook` writes beside each executed notebook
    (:mod:`kneelib.fingerprint`); empty when there are none.
    """
    from kneelib.fingerprint import FINGERPRINT_SUFFIX

    folder = Path(executed_dir)
    records = []
    for path in sorted(folder.glob(f"*{FINGERPRINT_SUFFIX}")) if folder.is_dir() else []:
        try:
            records.append(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
    if not records:
        return []
    lines = ["## Chapter executions", "",
             "Each chapter is re-executed by `make book` only when its notebook, parameters, the "
             "kneelib code it imports, the published values or the input data changed "
             "(`make book FORCE=1` re-executes all).", "",
             "| chapter | parameters | executed (UTC) | code version | wall time (min) |",
             "|---|---|---|---|---|"]
    for record in records:
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            f"`{record.get('chapter', '')}`", record.get("params_label", ""),
            str(record.get("executed_utc", "")).replace("+00:00", ""), f"`{record.get('code_version', '')}`",
            f"{float(record.get('wall_s', 0.0)) / 60:.1f}")) + " |")
    return lines + [""]


def install_mathjax(static_dir: str | os.PathLike) -> Path:
    """Copy the MathJax 2.7 files of ``jupyter-server-mathjax`` to ``<static_dir>/mathjax``.

    ``static_dir`` is ``book/_mathjax``, an ``html_static_path`` of the book (git-ignored;
    not ``_static``, whose scripts Jupyter Book adds to every page), and the book's
    ``mathjax_path`` points at ``_static/mathjax/MathJax.js``: pages render math with
    no CDN.
    Returns the path of ``MathJax.js``.

    Raises
    ------
    ModuleNotFoundError
        ``jupyter-server-mathjax`` is not installed (it is pinned in requirements.txt).
    """
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (source / "MathJax.js").is_file():
        raise FileNotFoundError(f"MathJax.js not found in {source} (jupyter-server-mathjax)")
    target = Path(static_dir) / "mathjax"
    if not (target / "MathJax.js").is_file():
        tmp = target.with_name("mathjax.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("localization", "LICENSE"))
        shutil.copy2(source / "LICENSE", tmp / "LICENSE")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target / "MathJax.js"


def _jupyter_book_command() -> list[str]:
    candidate = Path(sys.executable).parent / "jupyter-book"
    if candidate.is_file():
        return [str(candidate)]
    return [sys.executable, "-m", "jupyter_book"]


def _placeholder_notebook(path: Path, name: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"# {name}\n\nThis chapter was not executed in this build. Run "
        f"`python -m kneelib run {name} --params default`, then rebuild the book.")]
    nbformat.write(nb, path)


def build_book(params: str = "default", notebooks: list[str] | None = None,
               book_path: str | os.PathLike | None = None, progress: bool = True,
               reuse_executed: bool = False, force: bool = False) -> Path:
    """Execute the book's notebooks, regenerate the status page and build the HTML.

    Parameters
    ----------
    params : {'smoke', 'default', 'paper'}
        Parameter set used for every notebook.
    notebooks : list of str, optional
        Execute only these (default: every notebook in ``book/_toc.yml``). Chapters
        not executed keep their previous executed copy, or get a placeholder page.
    book_path : path, optional
        Build in this folder instead of ``<repo>/book`` (the book sources are copied
        there first; tests use it so they never touch the user's build).
    progress : bool
        Progress bars for notebook execution.
    reuse_executed : bool, default False
        Do not execute chapters that already have an executed copy in the build's
        ``_executed`` folder, whatever their inputs (the test suite executes each
        notebook once, then builds).
    force : bool, default False
        Execute every selected chapter. Otherwise a chapter is executed only when its
        notebook, its parameters, the ``kneelib`` code it imports, ``published.yml`` or
        the data under ``$KNEELIB_DATA`` changed since its last successful run
        (:func:`kneelib.fingerprint.chapter_fingerprint`); ``make book FORCE=1``.

    Returns
    -------
    Path
        ``<book>/_build/html/index.html``.

    Raises
    ------
    NotebookExecutionError
        A notebook failed (the build stops there).
    RuntimeError
        The Jupyter Book build failed; the message holds the end of its log.
    """
    source_book = book_dir()
    if book_path is None:
        book = source_book
    else:
        book = Path(book_path).resolve()
        book.mkdir(parents=True, exist_ok=True)
        for item in source_book.iterdir():
            if item.name in ("_build", "_executed", "_mathjax") or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, book / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, book / item.name)
    executed_dir = book / "_executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    chapters = toc_notebooks(book / "_toc.yml")
    selected = chapters if not notebooks else [Path(n).name.removesuffix(".ipynb") for n in notebooks]
    unknown = [n for n in selected if n not in chapters]
    if unknown:
        raise ValueError(f"notebooks {unknown} are not chapters of the book; add "
                         f"'- file: _executed/<name>' to {book / '_toc.yml'}")
    from kneelib.fingerprint import chapter_fingerprint, data_listing, is_up_to_date

    listing = data_listing() if not (force or reuse_executed) else None  # once for every chapter

    def up_to_date(name: str) -> bool:
        if force:
            return False
        if reuse_executed:
            return (executed_dir / f"{name}.ipynb").is_file()
        return is_up_to_date(executed_dir, name, chapter_fingerprint(notebook_path(name), resolve_params(name, params)[0],
                                                                     listing=listing))

    names = [n for n in selected if not up_to_date(n)]
    reused = [n for n in selected if n not in names]
    if reused:
        print(f"[kneelib] up to date, not re-executed: {', '.join(reused)}", file=sys.stderr)
    try:
        from tqdm.auto import tqdm
        bar = tqdm(names, desc=f"book ({params})", unit="notebook", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = names
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        run_notebook(name, params=params, out_dir=executed_dir, progress=progress)
    for name in chapters:
        if not (executed_dir / f"{name}.ipynb").is_file():
            _placeholder_notebook(executed_dir / f"{name}.ipynb", name)

    write_status_table(executed_dir, executed_dir / STATUS_TABLE_NAME, book / "published.yml")
    install_mathjax(book / "_mathjax")

    command = [*_jupyter_book_command(), "build", str(book), "--builder", "html"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=str(repo_root()), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + "\n" + result.stderr).splitlines()[-40:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}):\n{tail}")
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if "WARNING" in line or "ERROR" in line]
    for line in warnings:
        print(f"[jupyter-book] {line}", file=sys.stderr)
    index = book / "_build" / "html" / "index.html"
    if not index.is_file():
        raise RuntimeError(f"jupyter-book finished but {index} is missing")
    print(f"[kneelib] book built in {time.perf_counter() - started:.1f} s "
          f"({len(warnings)} warnings)", file=sys.stderr)
    return index
