"""Spherical maps of every knee of a cohort, from the cohort's files, cached by content (paper 001).

The chronic-pain chapter trains on the spherical maps of hundreds of right knees (paper 001,
"Spherical transformation", Fig. 4). One knee: its SAG 3D DESS with the tissue labels (the
synthetic cohort's ground truth; a real OAI download would give a segmentation), its SAG MSME
T2 series aligned onto the DESS through the patient coordinates
(:func:`kneelib.qmri.alignment.align_msme_to_dess`), and
:func:`kneelib.qmri.biomarkers.extract_knee_biomarkers` (thickness, bone shape, T2, surfaces,
224 x 224 maps). :func:`knee_spherical_maps` does it for ONE knee (a pure function of its files),
so :func:`cohort_spherical_maps` hands knees to :func:`kneelib.executor.map_tasks` (joblib processes,
or a dask.distributed cluster).

Cache. The key is a SHA-256 over the bytes of the knee's input files (every DESS and MSME
DICOM file, the label and lesion-mask NIfTI files), the options and :data:`CODE_VERSION`:
computing it reads the files (about 0.1 s a knee) but runs none of the extraction, and it is
remembered under the files' stat signature (:func:`kneelib.cache.stat_memoized`), so a cached
knee costs milliseconds from the second read on. The entry is
:func:`kneelib.qmri.biomarkers.save_biomarkers`'s ``.npz`` plus a small ``.extra.npz``
(written first; each to a temporary name, then renamed): the knee's right-left direction in
array-mm space (for the medial and lateral compartments) and, per bone, each vertex's distance
to the nearest planted focal cartilage-loss voxel of that bone (the synthetic ground truth the
saliency is scored against; ``inf`` without one).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from kneelib.qmri.biomarkers import (BONES, BiomarkerOptions, KneeBiomarkers, anatomical_directions,
                                     extract_knee_biomarkers, load_biomarkers, save_biomarkers, structure_masks)

__all__ = ["CODE_VERSION", "DESS_SERIES", "MSME_SERIES", "CohortKnee", "knee_input_files", "knee_maps_key",
           "knee_spherical_maps", "cohort_spherical_maps", "fill_cohort_maps_cache"]

#: Bump when the entry for the same files changes.
CODE_VERSION = "cohort-maps-4"
DESS_SERIES = "SAG_3D_DESS_RIGHT"
MSME_SERIES = "SAG_T2_MAP_RIGHT"


@dataclass(frozen=True)
class CohortKnee:
    """One knee's biomarkers with what the chronic-pain chapter needs beside them.

    Attributes
    ----------
    participant_id, visit_month
    biomarkers : KneeBiomarkers
    right : ndarray (3,)
        The patient's right direction in the array-mm space of the vertices (a right knee's
        medial side lies towards ``-right``).
    driver_distance_mm : dict of str to ndarray
        Per bone, each vertex's distance (mm) to the nearest planted focal cartilage-loss voxel
        nearer that bone than any other (``inf``: none, or no ground truth).
    seconds : float
        Time of the extraction (0 when read from the cache).
    """

    participant_id: str
    visit_month: int
    biomarkers: KneeBiomarkers
    right: np.ndarray
    driver_distance_mm: dict
    seconds: float = 0.0


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def knee_input_files(root, index, truth, participant_id: str, visit_month: int) -> dict:
    """The files one knee's maps are computed from: ``dess``, ``msme`` folders, ``labels``, ``lesions``."""
    from kneelib.data.errors import KneelibDataError

    root = Path(root)
    dess = index.find_series(participant_id, visit_month, DESS_SERIES)
    msme = index.find_series(participant_id, visit_month, MSME_SERIES)
    relative = dess.relative_to(index.root).as_posix()
    row = truth[truth["folder"] == relative]
    if row.empty:
        raise KneelibDataError(f"no ground-truth labels for series {relative}", reason="no labels")
    labels = root / row.iloc[0]["labels_path"]
    names = [n for n in str(row.iloc[0]["lesion_masks"] or "").split(";") if n and n != "nan"]
    return {"dess": dess, "msme": msme, "labels": labels,
            "lesions": {n: labels.parent / f"lesion_{n}.nii.gz" for n in names}}


def knee_maps_key(files: dict, options: BiomarkerOptions, t2: bool, memo_dir=None) -> str:
    """SHA-256 over the bytes of every input file, the options and :data:`CODE_VERSION`.

    With ``memo_dir`` the key is remembered under the files' stat signature
    (:func:`kneelib.cache.stat_memoized`): hashed once, then looked up in milliseconds.
    """
    header = f"{CODE_VERSION}\n{options!r}\nt2={t2}\n"
    paths = [*_series_files(files["dess"]), files["labels"], *files["lesions"].values()]
    if t2:
        paths += _series_files(files["msme"])

    def digest_of_bytes() -> str:
        digest = hashlib.sha256(header.encode())
        for path in paths:
            digest.update(Path(path).name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    if memo_dir is None:
        return digest_of_bytes()
    from kneelib.cache import stat_memoized

    return stat_memoized(memo_dir, paths, header, digest_of_bytes)


def _driver_distances(labels_volume: np.ndarray, loss: np.ndarray | None, spacing, vertices: dict) -> dict:
    """Per bone, vertex distance (mm) to the planted loss voxels nearest that bone (see module doc)."""
    out = {bone: np.full(len(v), np.inf, np.float32) for bone, v in vertices.items()}
    if loss is None or not np.any(loss):
        return out
    masks = structure_masks(labels_volume, "tissue")
    to_bone = np.stack([ndimage.distance_transform_edt(~masks[b], sampling=spacing)[loss] for b in BONES])
    owner = np.argmin(to_bone, axis=0)
    points = np.argwhere(loss) * np.asarray(spacing, float)
    from scipy.spatial import cKDTree

    for k, bone in enumerate(BONES):
        mine = points[owner == k]
        if len(mine) and bone in vertices:
            out[bone] = cKDTree(mine).query(np.asarray(vertices[bone], float))[0].astype(np.float32)
    return out


def _save_extra(path: Path, right: np.ndarray, distances: dict) -> None:
    from kneelib.cache import atomic_write

    atomic_write(path, lambda tmp: np.savez_compressed(tmp, right=right, **{f"distance/{b}": d
                                                                            for b, d in distances.items()}),
                 suffix=".npz")


def knee_spherical_maps(root, participant_id: str, visit_month: int, *, cache_dir, t2: bool = True,
                        options: BiomarkerOptions = BiomarkerOptions(), index=None, truth=None) -> CohortKnee:
    """One right knee's biomarkers and spherical maps, from the cache or computed and cached.

    Raises
    ------
    KneelibDataError
        A series or the labels are missing, or the extraction fails (a bone missing, ...).
    """
    from kneelib.data import read_dicom_series, read_image_index
    from kneelib.qmri.alignment import align_msme_to_dess
    from kneelib.synth.ground_truth import on_volume_grid, series_truth_table

    index = index if index is not None else read_image_index(root)
    truth = truth if truth is not None else series_truth_table(root)
    files = knee_input_files(root, index, truth, str(participant_id), int(visit_month))
    key = knee_maps_key(files, options, t2, memo_dir=cache_dir)
    path, extra_path = _entry_files(cache_dir, key)
    if path.is_file() and extra_path.is_file():
        return CohortKnee(str(participant_id), int(visit_month), *_read_entry(path, extra_path))
    start = time.perf_counter()
    dess = read_dicom_series(files["dess"])
    # the labels in Volume axis order (columns, rows, slices), as extract_knee_biomarkers takes them
    as_volume = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))
    labels = as_volume(on_volume_grid(files["labels"], dess))
    loss = (as_volume(on_volume_grid(files["lesions"]["cartilage_loss"], dess)) > 0
            if "cartilage_loss" in files["lesions"] else None)
    kwargs = dict(codes="tissue", affine=dess.affine, options=options)
    if t2:
        aligned = align_msme_to_dess(read_dicom_series(files["msme"]), dess)
        kwargs.update(echoes=aligned.echoes, echo_times_ms=aligned.echo_times_ms, echo_valid=aligned.covered)
    spacing = tuple(float(s) for s in dess.spacing_mm)
    result = extract_knee_biomarkers(labels, spacing, **kwargs)
    result = KneeBiomarkers(bones=result.bones, spacing_mm=result.spacing_mm, t2_fitted=result.t2_fitted, key=key)
    right = anatomical_directions(dess.affine, spacing)["right"]
    distances = _driver_distances(labels, loss, spacing, {b: v.vertices for b, v in result.bones.items()})
    extra_path.parent.mkdir(parents=True, exist_ok=True)
    _save_extra(extra_path, right, distances)
    save_biomarkers(result, path)
    # what the cache holds (stored precision), so a knee computed now equals the same knee read later
    return CohortKnee(str(participant_id), int(visit_month), *_read_entry(path, extra_path),
                      time.perf_counter() - start)


def _read_entry(path: Path, extra_path: Path) -> tuple[KneeBiomarkers, np.ndarray, dict]:
    """The biomarkers, right direction and driver distances of a cache entry."""
    with np.load(extra_path) as extra:
        distances = {k.split("/", 1)[1]: extra[k] for k in extra.files if k.startswith("distance/")}
        right = extra["right"]
    return load_biomarkers(path), right, distances


def _entry_files(cache_dir, key: str) -> tuple[Path, Path]:
    """The biomarker ``.npz`` and the ``.extra.npz`` of a knee's cache entry (:func:`kneelib.cache.entry_path`)."""
    from kneelib.cache import entry_path

    return entry_path(cache_dir, key, ".npz"), entry_path(cache_dir, key, ".extra.npz")


def _one(root, participant_id, visit_month, cache_dir, t2, options, keep: bool, index=None, truth=None):
    from kneelib.data.errors import KneelibDataError, exclusion_reason

    try:
        knee = knee_spherical_maps(root, participant_id, visit_month, cache_dir=cache_dir, t2=t2, options=options,
                                   index=index, truth=truth)
    except (KneelibDataError, FileNotFoundError) as error:
        return f"{participant_id}/{visit_month}: {exclusion_reason(error, root)}"
    return knee if keep else knee.seconds


def _compute_only(job: tuple):
    """:func:`_one` of a ``(root, participant, visit, cache_dir, t2, options)`` job, keeping only the time."""
    return _one(*job, False)


def _is_cached(root, row, cache_dir, t2, options, index, truth) -> bool:
    from kneelib.data.errors import KneelibDataError

    try:
        files = knee_input_files(root, index, truth, *row)
        key = knee_maps_key(files, options, t2, memo_dir=cache_dir)
    except (KneelibDataError, FileNotFoundError):
        return False  # the worker records why
    return all(part.is_file() for part in _entry_files(cache_dir, key))


def cohort_spherical_maps(root, knees, *, cache_dir=None, t2: bool = True, n_jobs: int = 1,
                          options: BiomarkerOptions = BiomarkerOptions(), progress: bool = False,
                          scheduler=None):
    """:func:`knee_spherical_maps` for every row (``participant_id``, ``visit_month``) of ``knees``.

    The cohort's image index and ground-truth table are read once. With ``n_jobs > 1``, or a
    dask.distributed ``scheduler`` (an address, ``Client`` or cluster; default
    ``$KNEELIB_DASK_SCHEDULER``), the knees not yet cached are computed by the executor's
    workers first (they return only their time, not the arrays; on a cluster the workers must
    see ``root`` and ``cache_dir``); then every knee is read from the cache in this process.

    Returns
    -------
    maps : dict of (participant_id, visit_month) to CohortKnee
        ``seconds`` > 0 for the knees this call computed.
    failures : list of str
        ``"<participant>/<visit>: <ErrorType>: <reason>"`` per knee that could not be measured,
        paths relative to the cohort root.
    """
    from kneelib.executor import scheduler_from

    cache_dir, index, truth, rows = _cohort_inputs(root, knees, cache_dir)
    computed = {}
    scheduler = scheduler_from(scheduler)
    if n_jobs != 1 or scheduler is not None:
        computed = _compute_missing(root, rows, cache_dir, t2, options, index, truth, n_jobs, scheduler, progress)
    maps, failures = {}, []
    for row in rows:
        if isinstance(computed.get(row), str):
            failures.append(computed[row])
            continue
        knee = _one(str(root), *row, cache_dir, t2, options, True, index=index, truth=truth)
        if isinstance(knee, str):
            failures.append(knee)
            continue
        if isinstance(computed.get(row), float) and computed[row] > 0:
            knee = CohortKnee(knee.participant_id, knee.visit_month, knee.biomarkers, knee.right,
                              knee.driver_distance_mm, computed[row])
        maps[row] = knee
    return maps, failures


def _cohort_inputs(root, knees, cache_dir):
    """The cache folder, the cohort's image index and truth table, and the (participant, visit) rows."""
    from kneelib.config import cache_root
    from kneelib.data import read_image_index
    from kneelib.synth.ground_truth import series_truth_table

    cache_dir = str(cache_dir if cache_dir is not None else cache_root() / "qmri_pain_maps")
    rows = [(str(p), int(v)) for p, v in zip(knees["participant_id"], knees["visit_month"])]
    return cache_dir, read_image_index(root), series_truth_table(root), rows


def _compute_missing(root, rows, cache_dir, t2, options, index, truth, n_jobs, scheduler, progress) -> dict:
    """Compute the knees of ``rows`` not yet cached on the executor; row -> seconds or failure text."""
    from kneelib.executor import map_tasks

    missing = [row for row in rows if not _is_cached(root, row, cache_dir, t2, options, index, truth)]
    jobs = [(str(root), p, v, cache_dir, t2, options) for p, v in missing]
    return dict(zip(missing, map_tasks(_compute_only, jobs, n_jobs=n_jobs, scheduler=scheduler, progress=progress,
                                       desc="spherical maps", unit="knee")))


def fill_cohort_maps_cache(root, knees, *, cache_dir=None, t2: bool = True, n_jobs: int | None = None,
                           options: BiomarkerOptions = BiomarkerOptions(), progress: bool = False,
                           scheduler=None) -> dict:
    """Compute and cache the maps of every knee of ``knees`` not yet cached, holding none in memory.

    What ``python -m kneelib.qmri.cohort_maps`` runs ahead of the chronic-pain chapter: the
    workers write the cache entries and return only their time, so memory stays that of one
    knee per worker whatever the cohort size (:func:`cohort_spherical_maps` then reads them).

    Returns
    -------
    dict
        ``knees`` (rows asked), ``cached`` (already in the cache), ``computed`` (by this call),
        ``seconds_per_computed_knee`` (mean worker time, None if none) and ``failures``
        (``"<participant>/<visit>: <ErrorType>: <reason>"``).
    """
    from kneelib.executor import scheduler_from

    cache_dir, index, truth, rows = _cohort_inputs(root, knees, cache_dir)
    computed = _compute_missing(root, rows, cache_dir, t2, options, index, truth, n_jobs, scheduler_from(scheduler),
                                progress)
    seconds = [v for v in computed.values() if isinstance(v, float)]
    return {"knees": len(rows), "cached": len(rows) - len(computed), "computed": len(seconds),
            "seconds_per_computed_knee": float(np.mean(seconds)) if seconds else None,
            "failures": [v for v in computed.values() if isinstance(v, str)]}


def main(argv: Sequence[str] | None = None) -> None:
    """Fill the spherical-map cache ahead of a chapter run (every right knee with DESS, MSME and KL).

    ``python -m kneelib.qmri.cohort_maps [ROOT | --preset default --seed 0] [--jobs N] [--scheduler ADDRESS]
    [--no-t2]``; without ROOT the synthetic cohort of ``--preset`` / ``--seed`` (generated if absent).
    """
    import argparse

    from kneelib.data.qmri_cohort import qmri_knee_table

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", nargs="?", default=None)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--scheduler", default=None,
                        help="dask.distributed scheduler address (tcp://host:8786); default $KNEELIB_DASK_SCHEDULER; "
                             "'local' forces joblib")
    parser.add_argument("--no-t2", action="store_true")
    args = parser.parse_args(argv)
    root = args.root
    if root is None:
        from kneelib.config import oai_root
        from kneelib.synth.cohort import generate_cohort

        root = oai_root() or generate_cohort(preset=args.preset, seed=args.seed, progress=False)
    start = time.perf_counter()
    summary = fill_cohort_maps_cache(root, qmri_knee_table(root), t2=not args.no_t2, n_jobs=args.jobs,
                                     progress=True, scheduler=args.scheduler)
    print(json.dumps({**summary, "wall_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
