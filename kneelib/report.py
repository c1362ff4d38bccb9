"""Paper-vs-reproduced numbers: saved by each notebook, read by the status page.

Every chapter ends with a table of the published numbers beside the reproduced
ones. The notebook builds a list of :class:`Comparison` rows, shows them with
:func:`comparison_table` and saves them with :func:`save_metrics` to
``book/_executed/<study>.metrics.json``; the book's reproduction-status page reads
all those files.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

__all__ = ["Comparison", "save_metrics", "load_metrics", "comparison_table", "metrics_dir",
           "published_path", "published_values"]


@dataclass
class Comparison:
    """One published number next to its reproduction.

    Attributes
    ----------
    study : str
        Notebook name, e.g. ``"siamese_pain"``.
    quantity : str
        What is measured, e.g. ``"AUC, Model A (10-fold CV)"``.
    published : float or str or None
        The paper's value (``None`` when the paper gives none).
    reproduced : float or None
        Value obtained by running the code on this run's data.
    ci_low, ci_high : float or None
        95% confidence interval of the reproduced value, when computed.
    source : str
        Where the published value stands (e.g. ``"Fig. 4A"``, ``"Table 2"``).
    data : str
        What the reproduction ran on (``"synthetic default, n=240"``, ``"real: Chen KL val"``).
    note : str
        Anything a reader must know to compare the two numbers.
    """

    study: str
    quantity: str
    published: float | str | None
    reproduced: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    source: str = ""
    data: str = ""
    note: str = ""


def published_path() -> Path:
    """``book/published.yml``: the one place where published values are written down."""
    from kneelib.config import repo_root

    return repo_root() / "book" / "published.yml"


def published_values(study: str, path: str | Path | None = None):
    """The published values one chapter compares against, from ``book/published.yml``.

    Every number a paper printed that the code compares with lives once, under
    ``values: <study>:`` in ``book/published.yml``; modules and notebooks read it here
    instead of restating it.

    Parameters
    ----------
    study : str
        Chapter key, e.g. ``"siamese_pain"``.
    path : path, optional
        Default :func:`published_path`.

    Returns
    -------
    dict
        The YAML mapping of that chapter (nested as written there).

    Raises
    ------
    KeyError
        When ``published.yml`` has no values for ``study``.
    """
    import yaml

    source = Path(path) if path is not None else published_path()
    document = yaml.safe_load(source.read_text()) or {}
    values = (document.get("values") or {})
    if study not in values:
        raise KeyError(f"{source} has no published values for {study!r} (known: {sorted(values)})")
    return values[study]


def metrics_dir() -> Path:
    """Folder of the metrics files: ``$KNEELIB_METRICS_DIR`` or ``<repo>/book/_executed``."""
    from kneelib.config import repo_root

    return Path(os.environ.get("KNEELIB_METRICS_DIR", repo_root() / "book" / "_executed"))


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def save_metrics(study: str, comparisons: list[Comparison], params: dict | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Write ``<out_dir>/<study>.metrics.json`` (atomically) and return its path.

    Parameters
    ----------
    study : str
        Notebook name.
    comparisons : list of Comparison
    params : dict, optional
        The parameter set the notebook ran with (recorded beside the numbers).
    out_dir : path, optional
        Default :func:`metrics_dir`.
    """
    out = Path(out_dir) if out_dir is not None else metrics_dir()
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "study": study,
        "params": {k: _clean(v) for k, v in (params or {}).items()},
        "comparisons": [{k: _clean(v) for k, v in asdict(c).items()} for c in comparisons],
    }
    path = out / f"{study}.metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def load_metrics(out_dir: str | Path | None = None) -> dict[str, dict]:
    """All ``*.metrics.json`` under ``out_dir``, keyed by study."""
    out = Path(out_dir) if out_dir is not None else metrics_dir()
    return {p.name.removesuffix(".metrics.json"): json.loads(p.read_text())
            for p in sorted(out.glob("*.metrics.json"))}


def comparison_table(comparisons: list[Comparison]) -> pd.DataFrame:
    """A display table: quantity, published, reproduced (with CI), source, data, note."""
    rows = []
    for c in comparisons:
        if c.reproduced is None:
            reproduced = "not run"
        elif isinstance(c.reproduced, float) and not math.isfinite(c.reproduced):
            reproduced = "undefined"
        elif c.ci_low is not None and c.ci_high is not None:
            reproduced = f"{c.reproduced:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"
        else:
            reproduced = f"{c.reproduced:.3f}" if isinstance(c.reproduced, float) else str(c.reproduced)
        published = "" if c.published is None else (
            f"{c.published:.3f}" if isinstance(c.published, float) else str(c.published))
        rows.append({"quantity": c.quantity, "published": published, "reproduced": reproduced,
                     "source": c.source, "data": c.data, "note": c.note})
    return pd.DataFrame(rows)
