"""Content-addressed NIfTI cache of DICOM series volumes.

Reading a DICOM series (hundreds of files) is slow compared to reading one
NIfTI file, so :func:`load_series_cached` keeps each read volume under
``kneelib.config.cache_root() / "volumes"``. The key is a SHA-256 of the input
files' names, sizes and modification times, the read parameters and
:data:`READER_VERSION`; a changed file, parameter or reader gives a new entry.
Entries are written to a temporary name and renamed (atomic on one file
system), metadata first and the image last, so an interrupted run never leaves a
half-written entry that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from kneelib import config
from kneelib.data.dicom import Volume, list_dicom_files, read_dicom_series

__all__ = ["READER_VERSION", "series_cache_key", "save_volume", "load_volume", "load_series_cached"]

#: Bump when the reader's output for the same files changes.
READER_VERSION = "1"


def _folders(folders: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(folders, (str, Path)):
        return [Path(folders)]
    return [Path(f) for f in folders]


def series_cache_key(folders: str | Path | Sequence[str | Path], **parameters) -> str:
    """SHA-256 key of a series read: file names, sizes, mtimes, parameters, reader version."""
    digest = hashlib.sha256()
    digest.update(f"kneelib-dicom-volume-v{READER_VERSION}\n".encode())
    for folder in _folders(folders):
        digest.update(f"folder {folder.resolve()}\n".encode())
        for path in list_dicom_files(folder):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _atomic_write(path: Path, writer, suffix: str = ".tmp") -> None:
    """Call ``writer(tmp)`` on a temporary sibling of ``path`` (ending in ``suffix``), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Save a volume as NIfTI (``.nii.gz``) plus a JSON sidecar (``.json``) with its metadata.

    Both are written atomically (temporary name, then rename), the image last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    meta = {
        "echo_times_ms": list(volume.echo_times_ms),
        "laterality": volume.laterality,
        "laterality_source": volume.laterality_source,
        "series_description": volume.series_description,
        "mirrored": volume.mirrored,
        "metadata": volume.metadata,
    }
    _atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str)))
    image = volume.to_nifti()
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    _atomic_write(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)
    return path


def load_volume(path: str | Path) -> Volume:
    """Load a volume saved by :func:`save_volume` (array dtype and affine preserved)."""
    path = Path(path)
    sidecar = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    image = nib.load(str(path))
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return Volume(
        array=np.asarray(image.dataobj),
        affine=np.asarray(image.affine, dtype=float),
        echo_times_ms=tuple(meta.get("echo_times_ms", ())),
        laterality=meta.get("laterality"),
        laterality_source=meta.get("laterality_source", "unknown"),
        series_description=meta.get("series_description", ""),
        mirrored=bool(meta.get("mirrored", False)),
        metadata=meta.get("metadata", {}),
    )


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
    root = Path(cache_dir) if cache_dir is not None else config.cache_root() / "volumes"
    path = root / key[:2] / f"{key}.nii.gz"
    if path.is_file():
        return load_volume(path)
    volume = read_dicom_series(folders, laterality=laterality)
    save_volume(volume, path)
    return volume
