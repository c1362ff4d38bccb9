"""Content-addressed NIfTI cache of DICOM series volumes.

Reading a DICOM series (hundreds of files) is slow compared to reading one
NIfTI file, so :func:`load_series_cached` keeps each read volume under
``kneelib.config.cache_root() / "volumes"``. The key is a SHA-256 over the
*content* of the input files (a BLAKE2b digest of each file's bytes,
:func:`file_content_digest`), the read parameters and :data:`READER_VERSION`:
a changed byte, parameter or reader gives a new entry, while copying, moving,
renaming or touching the files (new path, name or modification time) keeps it.
Hashing the bytes costs about as much as reading them once (some 50 ms for an
80-slice DESS series from the page cache), far less than parsing the DICOM files;
a cheaper key (SOPInstanceUIDs and sizes) would miss edited pixel data that keeps
its UIDs, as a re-rendered synthetic series does.
Entries are written to a temporary name and renamed (atomic on one file
system), metadata first and the image last, so an interrupted run never leaves a
half-written entry that a later run would trust (:func:`kneelib.cache.atomic_write`).

:func:`cache_series_volumes` fills the cache for many series at once, one task per series,
through :func:`kneelib.executor.map_tasks` (joblib here, dask.distributed on a cluster):
``python -m kneelib volumes ROOT`` does it for every MRI series of a cohort.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from kneelib import config
from kneelib.cache import atomic_write, entry_path
from kneelib.data.dicom import Volume, list_dicom_files, read_dicom_series

__all__ = ["READER_VERSION", "file_content_digest", "series_cache_key", "save_volume", "load_volume",
           "cached_series_path", "load_series_cached", "cache_series_volumes", "mri_series_folders",
           "MRI_SERIES_PATTERN"]

#: Bump when the reader's output for the same files changes. 3: the sidecar keeps the exact
#: (float64) affine, which NIfTI's float32 header rounds (a cached 1/0.9 mm pixel read back as
#: 1.1111111640930176 mm, so a registration differed between the first read and later ones).
READER_VERSION = "3"


def file_content_digest(path: str | Path) -> str:
    """BLAKE2b-128 hex digest of a file's bytes (its name and modification time play no part)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _folders(folders: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(folders, (str, Path)):
        return [Path(folders)]
    return [Path(f) for f in folders]


def series_cache_key(folders: str | Path | Sequence[str | Path], **parameters) -> str:
    """SHA-256 key of a series read: the files' content, the parameters and the reader version.

    Each folder contributes the sorted content digests of its files
    (:func:`file_content_digest`), so the key does not depend on where the files
    lie, what they are called or when they were last touched; it changes when any
    byte of any file, a read parameter or :data:`READER_VERSION` changes.
    """
    digest = hashlib.sha256()
    digest.update(f"kneelib-dicom-volume-v{READER_VERSION}\n".encode())
    for folder in _folders(folders):
        digest.update(b"folder\n")
        for file_digest in sorted(file_content_digest(path) for path in list_dicom_files(folder)):
            digest.update(f"{file_digest}\n".encode())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Save a volume as NIfTI (``.nii.gz``) plus a JSON sidecar (``.json``) with its metadata.

    Both are written atomically (temporary name, then rename), the image last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    meta = {
        "affine": np.asarray(volume.affine, dtype=float).tolist(),  # exact: the NIfTI header rounds to float32
        "echo_times_ms": list(volume.echo_times_ms),
        "laterality": volume.laterality,
        "laterality_source": volume.laterality_source,
        "series_description": volume.series_description,
        "mirrored": volume.mirrored,
        "metadata": volume.metadata,
    }
    atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str)))
    image = volume.to_nifti()
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    atomic_write(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)
    return path


def load_volume(path: str | Path) -> Volume:
    """Load a volume saved by :func:`save_volume` (array dtype and affine preserved).

    The affine comes from the sidecar, exactly as the DICOM reader computed it; the NIfTI
    header's (float32) is the fallback for a file without one.
    """
    path = Path(path)
    sidecar = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    image = nib.load(str(path))
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return Volume(
        array=np.asarray(image.dataobj),
        affine=np.asarray(meta["affine"] if "affine" in meta else image.affine, dtype=float),
        echo_times_ms=tuple(meta.get("echo_times_ms", ())),
        laterality=meta.get("laterality"),
        laterality_source=meta.get("laterality_source", "unknown"),
        series_description=meta.get("series_description", ""),
        mirrored=bool(meta.get("mirrored", False)),
        metadata=meta.get("metadata", {}),
    )


def _cache_folder(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else config.cache_root() / "volumes"


def cached_series_path(
    folders: str | Path | Sequence[str | Path],
    *,
    laterality: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Make sure the cache holds the series' volume and return the entry's ``.nii.gz`` path.

    Idempotent: an existing entry is kept untouched; a missing one is read and written
    atomically (sidecar first, image last). Arguments as :func:`load_series_cached`.
    """
    key = series_cache_key(folders, laterality=laterality)
    path = entry_path(_cache_folder(cache_dir), key, ".nii.gz")
    if not path.is_file():
        save_volume(read_dicom_series(folders, laterality=laterality), path)
    return path


def load_series_cached(
    folders: str | Path | Sequence[str | Path],
    *,
    laterality: str | None = None,
    cache_dir: str | Path | None = None,
) -> Volume:
    """:func:`~kneelib.data.dicom.read_dicom_series`, served from the NIfTI cache when possible.

    Parameters
    ----------
    folders, laterality
        As for :func:`~kneelib.data.dicom.read_dicom_series`.
    cache_dir : path, optional
        Default ``kneelib.config.cache_root() / "volumes"``.

    Returns
    -------
    Volume
        Equal (array, affine, echo times, laterality) to a fresh read.
    """
    key = series_cache_key(folders, laterality=laterality)
    path = entry_path(_cache_folder(cache_dir), key, ".nii.gz")
    if path.is_file():
        return load_volume(path)
    volume = read_dicom_series(folders, laterality=laterality)
    save_volume(volume, path)
    return volume


#: Series descriptions of MRI series in the OAI image index (radiographs are not volumes).
MRI_SERIES_PATTERN = r"(SAG|COR|AX)_.*"


def _series_task(folder: str, *, cache_dir: str, laterality: str | None) -> dict[str, Any]:
    from kneelib.data.errors import KneelibDataError

    try:
        return {"folder": folder, "path": str(cached_series_path(folder, laterality=laterality, cache_dir=cache_dir)),
                "error": ""}
    except (KneelibDataError, FileNotFoundError) as error:
        return {"folder": folder, "path": "", "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}


def cache_series_volumes(
    folders: Sequence[str | Path],
    *,
    laterality: str | None = None,
    cache_dir: str | Path | None = None,
    n_jobs: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Convert many DICOM series to cached NIfTI volumes, one task per series (the per-subject stage).

    Parameters
    ----------
    folders : sequence of paths
        Series folders (one series each).
    laterality : str, optional
        As for :func:`~kneelib.data.dicom.read_dicom_series`.
    cache_dir : path, optional
        Default ``kneelib.config.cache_root() / "volumes"``, resolved here (not on the workers).
    n_jobs, scheduler, progress
        As for :func:`kneelib.executor.map_tasks` (joblib by default; a dask scheduler address,
        client or cluster, or ``$KNEELIB_DASK_SCHEDULER``).

    Returns
    -------
    list of dict
        Per folder, in input order: ``folder``, ``path`` of the cached ``.nii.gz`` (empty when the
        series could not be read) and ``error`` (the exception type and first message line).
    """
    from kneelib.executor import map_tasks

    root = str(_cache_folder(cache_dir).resolve())
    task = functools.partial(_series_task, cache_dir=root, laterality=laterality)
    return map_tasks(task, [str(Path(f).resolve()) for f in folders], n_jobs=n_jobs, scheduler=scheduler,
                     progress=progress, desc="DICOM -> NIfTI", unit="series")


def mri_series_folders(index, pattern: str = MRI_SERIES_PATTERN) -> list[Path]:
    """Folders of the series of an :class:`~kneelib.data.image_index.ImageIndex` whose description
    matches ``pattern`` (case-insensitive, whole description), in index order."""
    regex = re.compile(pattern, re.IGNORECASE)
    table = index.table
    keep = table["SeriesDescription"].map(lambda d: bool(regex.fullmatch(str(d).strip())))
    return [Path(p) for p in table.loc[keep, "path"]]
