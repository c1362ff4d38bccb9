"""Where kneelib finds data and keeps its caches.

Two environment variables steer every path the package touches:

``KNEELIB_DATA``
    Root of the *read-only* data: a real OAI download (``$KNEELIB_DATA/oai`` or
    the root itself when it holds ``contents.csv``) and the public real data sets
    (``chen_kl_radiographs/``, ``pykneer_knee_mri/``, ``deep_pain_regression/``).
    Default: ``data/`` in the working directory.
``KNEELIB_CACHE``
    Root of everything kneelib writes: generated synthetic cohorts, preprocessed
    volumes, trained models. Default: ``.cache/`` in the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "cache_root", "real_dataset", "oai_root", "repo_root"]


def data_root() -> Path:
    """Root of the read-only data (``$KNEELIB_DATA``, default ``./data``)."""
    return Path(os.environ.get("KNEELIB_DATA", "data")).expanduser().resolve()


def cache_root() -> Path:
    """Root of kneelib's writable cache (``$KNEELIB_CACHE``, default ``./.cache``)."""
    root = Path(os.environ.get("KNEELIB_CACHE", ".cache")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def real_dataset(name: str) -> Path:
    """Folder of one public real data set under the data root.

    Parameters
    ----------
    name : str
        Folder name, e.g. ``"chen_kl_radiographs"``.

    Raises
    ------
    FileNotFoundError
        If the folder is absent, naming the path and the variable to set.
    """
    path = data_root() / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"real data set '{name}' not found at {path}; set KNEELIB_DATA to the folder "
            f"that holds it (CI uses ../shared/data)"
        )
    return path


def oai_root() -> Path | None:
    """Root of a real OAI download, or ``None`` when there is none.

    ``$KNEELIB_OAI`` wins; otherwise ``$KNEELIB_DATA/oai``; otherwise the data root
    itself when it holds an OAI image index (``contents.csv``).
    """
    if "KNEELIB_OAI" in os.environ:
        return Path(os.environ["KNEELIB_OAI"]).expanduser().resolve()
    for candidate in (data_root() / "oai", data_root()):
        if (candidate / "contents.csv").is_file() or (candidate / "AllClinical00.txt").is_file():
            return candidate
    return None


def repo_root() -> Path:
    """The checkout that holds ``notebooks/`` and ``params/`` (parent of the package)."""
    return Path(__file__).resolve().parent.parent
