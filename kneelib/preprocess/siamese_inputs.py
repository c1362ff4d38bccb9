"""Inputs of the Siamese knee-pain network: both knees of a subject as registered slice stacks (paper 000).

Paper 000 (Chang et al. 2020), Methods "Image pre-processing" and "Image registration and
quality check", Fig. 1: per knee the centre slice (most complete PCL), mirroring of left
knees, rigid registration of every kept slice to a template knee, a 105 mm crop resized to
the network's input, ``2 * n_each_side + 1`` slices, and artefact QC. Subjects missing a
covariate the study stratifies on are excluded first
(:func:`kneelib.data.labels.exclude_missing_covariates`), so the exclusion table holds every
reason a subject left the analysis.

:func:`preprocess_cohort` returns a :class:`PreprocessedCohort`; each knee is cached as an
``.npz`` keyed on its series, truth files, settings and template.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["LESION_NAMES", "PreprocessConfig", "PreprocessedCohort", "preprocess_cohort",
           "center_slice_accuracy", "joint_centre_mm"]

#: Lesions planted by the synthetic cohort, in paper 000 Fig. 3I's order; bit ``i`` of
#: :attr:`PreprocessedCohort.lesions` is lesion ``i`` (also the priority when masks overlap).
LESION_NAMES: tuple[str, ...] = ("effusion_synovitis", "bml", "hoffa_synovitis", "cartilage_loss",
                                 "meniscal_damage")
_CACHE_FOLDER = "siamese_pain"
_IMAGE_SERIES = {"R": "SAG_IW_TSE_RIGHT", "L": "SAG_IW_TSE_LEFT"}
_PREPROCESS_VERSION = "1"


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings (paper: 224 px, 11 each side, step 1, 105 mm, every slice registered).

    ``center_slice``: ``"auto"`` detects the PCL slice
    (:func:`kneelib.preprocess.center_slice.detect_pcl_center_slice`); ``"middle"`` takes the
    middle slice of the stack (for the ``smoke`` cohort, whose 2.5 mm pixels cannot resolve
    the PCL).
    """

    image_size: int = 64
    n_each_side: int = 3
    step: int = 3
    crop_mm: float = 105.0
    per_slice: bool = True
    iterations: int = 50
    shrink_factors: tuple[int, ...] = (4, 2)
    seed: int = 0
    center_slice: str = "auto"

    @property
    def n_slices(self) -> int:
        return 2 * self.n_each_side + 1


@dataclass
class PreprocessedCohort:
    """Both knees of every subject that passed QC, ready for the network.

    Attributes
    ----------
    images : ndarray, shape (n, 2, n_slices, H, W), float32
        Knee 0 = left, 1 = right; slices medial -> lateral.
    lesions : ndarray, shape (n, 2, n_slices, H, W), uint8
        Bit ``i`` set where lesion :data:`LESION_NAMES` ``[i]`` was planted (zeros on real data).
    cohort : DataFrame
        The rows of :func:`kneelib.data.labels.unilateral_pain_cohort` kept, in the order of ``images``.
    exclusions : DataFrame
        One row per excluded knee (participant_id, side, step, reason); the subject is dropped.
    knees : DataFrame
        One row per processed knee: detected and true centre slice, QC measures, planted artefact.
    """

    images: np.ndarray
    lesions: np.ndarray
    cohort: pd.DataFrame
    exclusions: pd.DataFrame
    knees: pd.DataFrame = field(default_factory=pd.DataFrame)

    def lesion_masks(self, subject: int, knee: int, slice_index: int) -> dict[str, np.ndarray]:
        """Boolean mask per lesion name on one preprocessed slice."""
        code = self.lesions[subject, knee, slice_index]
        return {name: (code & (1 << bit)) > 0 for bit, name in enumerate(LESION_NAMES)}


def _on_grid(nifti_array: np.ndarray, nifti_affine: np.ndarray, volume):
    """A ground-truth array in generator NIfTI axes on the voxel grid of ``volume`` (array layout)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(nifti_affine), io_orientation(volume.affine))
    data = apply_orientation(nifti_array, transform)
    affine = nifti_affine @ inv_ornt_aff(transform, nifti_array.shape)
    if data.shape != volume.shape[:3] or not np.allclose(affine, volume.affine, atol=1e-3):
        raise ValueError(f"ground truth {nifti_array.shape} is not on the grid of series "
                         f"{volume.metadata.get('folders')} {volume.shape[:3]}")
    return np.ascontiguousarray(data)


def _knee_truth(root: Path, truth_row: pd.Series, volume) -> tuple[int, np.ndarray]:
    """(true centre slice, lesion code volume), both in the slice order of :func:`sagittal_slices`."""
    from dataclasses import replace

    import nibabel as nib
    from kneelib.preprocess.registration import sagittal_slices

    label_path = root / truth_row["labels_path"]
    header = nib.load(label_path)
    shape, affine = header.shape, header.affine
    slice_number = np.broadcast_to(np.arange(shape[2], dtype=np.int16)[None, None, :], shape)
    code = np.zeros(shape, dtype=np.uint8)
    present = str(truth_row["lesion_masks"]) if isinstance(truth_row["lesion_masks"], str) else ""
    for bit, name in enumerate(LESION_NAMES):
        if name in present.split(";"):
            mask = np.asarray(nib.load(label_path.parent / f"lesion_{name}.nii.gz").dataobj) > 0
            code |= (mask.astype(np.uint8) << bit)
    ordered_number, _ = sagittal_slices(replace(volume, array=_on_grid(np.array(slice_number), affine, volume)))
    ordered_code, _ = sagittal_slices(replace(volume, array=_on_grid(code, affine, volume)))
    truth_index = int(truth_row["pcl_center_slice"])
    matches = np.flatnonzero(ordered_number[:, 0, 0] == truth_index)
    return (int(matches[0]) if len(matches) and truth_index >= 0 else -1), ordered_code


def _cache_key(folder: Path, truth_files: list[Path], config: PreprocessConfig, template_key: str) -> str:
    from kneelib.data.cache import file_content_digest, series_cache_key

    digest = hashlib.sha256()
    digest.update(f"siamese-pain-knee-v{_PREPROCESS_VERSION}\n".encode())
    digest.update(series_cache_key(folder).encode())
    for path in truth_files:  # content, not name/size/mtime: the key is content-addressed
        digest.update(f"{file_content_digest(path) if path.is_file() else 'absent'}\n".encode())
    digest.update(json.dumps(config.__dict__, sort_keys=True, default=list).encode())
    digest.update(template_key.encode())
    return digest.hexdigest()


def _save_npz_atomic(path: Path, **arrays) -> None:
    from kneelib.cache import atomic_write

    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


def _load_knee(index, participant_id: str, side: str, qc):
    """(volume, folder) of one SAG IW TSE knee, or None with the reason recorded in ``qc``."""
    from kneelib.data.cohort import SeriesRequest, iter_series_volumes

    request = SeriesRequest(participant_id, 0, _IMAGE_SERIES[side])
    for _request, volume in iter_series_volumes(index, [request], qc=qc):
        return volume, index.find_series(participant_id, 0, _IMAGE_SERIES[side])
    return None


def joint_centre_mm(slices: np.ndarray, spacing_mm, center_index: int) -> tuple[float, float]:
    """(row, column) mm of the template's joint centre: intensity-weighted centre of its centre slice.

    The paper picked its template and crop by eye; here the crop centre is the centroid of
    the brighter-than-median tissue of the template's centre slice (the knee fills the
    field of view, so this lies at the joint).
    """
    image = slices[center_index].astype(np.float64)
    weight = np.clip(image - np.median(image), 0, None)
    rows, cols = np.indices(image.shape)
    total = weight.sum() or 1.0
    return (float((rows * weight).sum() / total * spacing_mm[0]), float((cols * weight).sum() / total * spacing_mm[1]))


def preprocess_cohort(root: str | Path, cohort: pd.DataFrame, config: PreprocessConfig = PreprocessConfig(),
                      cache_dir: str | Path | None = None, progress: bool = True, n_jobs: int | None = None,
                      scheduler=None) -> PreprocessedCohort:
    """Centre slice, mirroring, rigid registration, crop, resize and QC of both knees of every subject.

    Paper 000, Methods "Image pre-processing" and Fig. 1: the centre slice (most complete
    PCL) is found automatically with
    :func:`kneelib.preprocess.center_slice.detect_pcl_center_slice` (the paper chose it by
    hand); left knees are mirrored by :func:`kneelib.preprocess.registration.sagittal_slices`;
    every kept slice is registered rigidly to the same slice offset of a template knee (the
    first subject's right knee) and resampled to a ``crop_mm`` square at ``image_size``
    (:func:`kneelib.preprocess.registration.preprocess_knee`), the planted lesion masks
    travelling along. Artefact QC (Methods "Image registration and quality check") is
    automatic: a knee is excluded when its series does not load (slice gaps, unreadable
    files: :class:`kneelib.data.cohort.QCLog`), no PCL is found, too few slices lie
    around the centre, more than 10% of a crop is empty (missing data), or its worst
    slice's registration metric or intensity contrast is a cohort outlier (median + 5
    MAD). A subject with an excluded knee is dropped. Before any image is read, subjects
    missing age, BMI or sex are excluded with their reason
    (:func:`kneelib.data.labels.exclude_missing_covariates`, step ``"covariates"``): the
    stratified cross-validation needs all three.

    Each knee is one task of :func:`kneelib.executor.map_tasks` (joblib processes here, or
    the workers of a dask.distributed cluster; issue 15, part 3) and is cached as a
    content-addressed ``.npz`` under ``cache_root()/siamese_pain/knees`` (DICOM file stats,
    truth files, settings and the template; written to a temporary name and renamed), so a
    run resumes where it stopped and the entries are the same whoever computes them: the
    registration runs on one thread with a fixed seed
    (:func:`kneelib.preprocess.registration.register_slice`).

    Parameters
    ----------
    root : path
        OAI root (real or synthetic; ground truth is used when ``root/ground_truth`` exists).
    cohort : DataFrame
        From :func:`kneelib.data.labels.unilateral_pain_cohort`.
    config : PreprocessConfig
    cache_dir : path or None
    progress : bool
        tqdm bar over knees.
    n_jobs : int, optional
        Local worker processes (None: every core; 1: in this process).
    scheduler : str, distributed.Client or cluster, optional
        A dask.distributed scheduler (default ``$KNEELIB_DASK_SCHEDULER``; none: joblib). The
        workers must see ``root`` and the cache folder.

    Returns
    -------
    PreprocessedCohort
    """
    from kneelib.config import cache_root
    from kneelib.data.cache import series_cache_key
    from kneelib.data.labels import exclude_missing_covariates
    from kneelib.data.cohort import QCLog
    from kneelib.executor import map_tasks
    from kneelib.preprocess.center_slice import CenterSliceNotFoundError, detect_pcl_center_slice
    from kneelib.preprocess.registration import sagittal_slices

    if config.center_slice not in ("auto", "middle"):
        raise ValueError(f"center_slice must be 'auto' or 'middle', got {config.center_slice!r}")
    root = Path(root)
    index = _image_index(str(root))
    truth_path = root / "ground_truth" / "series.csv"
    truth = pd.read_csv(truth_path, dtype={"participant_id": str}) if truth_path.is_file() else None
    if truth is not None:
        truth = truth[(truth["series_key"] == "sag_iw_tse") & (truth["visit_month"] == 0)]
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / _CACHE_FOLDER / "knees"
    cohort, missing_covariates = exclude_missing_covariates(cohort)
    exclusions: list[dict] = missing_covariates.to_dict("records")

    # template: the first subject whose right knee loads and shows a PCL
    template = None
    for participant_id in cohort["participant_id"]:
        loaded = _load_knee(index, participant_id, "R", QCLog())
        if loaded is None:
            continue
        slices, spacing = sagittal_slices(loaded[0])
        try:
            centre = ((len(slices) - 1) // 2 if config.center_slice == "middle"
                      else detect_pcl_center_slice(slices, spacing).index)
        except CenterSliceNotFoundError:
            continue
        # the key names the template's content too: a worker that kept a template in memory
        # from an earlier call (loky reuses its processes) never serves it for a rewritten series
        template = dict(participant_id=participant_id, slices=slices, spacing=spacing, centre=centre,
                        centre_mm=joint_centre_mm(slices, spacing, centre),
                        key=f"{participant_id}:{loaded[1]}:{centre}:{series_cache_key(loaded[1])}")
        break
    if template is None:
        raise ValueError(f"no knee in {root} could serve as registration template (no loadable SAG IW TSE with a PCL)")

    template_ref = {k: template[k] for k in ("participant_id", "centre", "centre_mm", "key")}
    _TEMPLATE_SLICES.clear()  # this process's tasks (n_jobs=1) need not read the template again
    _TEMPLATE_SLICES[(str(root), template["key"])] = (template["slices"], template["spacing"])
    tasks = []
    for participant_id in cohort["participant_id"]:
        for side in ("L", "R"):
            tasks.append({"root": str(root), "participant_id": participant_id, "side": side,
                          "config": config, "template": template_ref, "cache": str(cache),
                          "truth": None if truth is None else
                          truth[truth["participant_id"] == str(participant_id)].to_dict("records")})
    outcomes = map_tasks(_knee_task, tasks, n_jobs=n_jobs, scheduler=scheduler, progress=progress,
                         desc="preprocess knees", unit="knee")
    knee_rows, results = [], {}
    for task, outcome in zip(tasks, outcomes):
        row = {"participant_id": task["participant_id"], "side": task["side"]}
        if outcome["load_reason"] is not None:
            exclusions.append({**row, "step": "load", "reason": outcome["load_reason"]})
            continue
        row.update(outcome["row"])
        if outcome["reason"]:
            exclusions.append({**row, "step": "preprocess", "reason": outcome["reason"]})
        else:
            with np.load(outcome["path"]) as stored:
                entry = {k: stored[k] for k in ("images", "lesions", "metric")}
            empty = float((entry["images"] <= 0).mean())
            row.update(empty_fraction=empty, worst_metric=float(entry["metric"].max()),
                       contrast=float(np.percentile(entry["images"], 99.9) / max(np.median(entry["images"]), 1e-6)))
            results[(task["participant_id"], task["side"])] = entry
        knee_rows.append(row)
    knees = pd.DataFrame(knee_rows)
    # artefact QC on the cohort's distribution of each measure (Fig. 1C)
    measured = knees.dropna(subset=["worst_metric"]) if "worst_metric" in knees else knees.iloc[:0]
    for column, limit_text in (("worst_metric", "registration metric"), ("contrast", "intensity contrast")):
        values = measured[column]
        median, mad = values.median(), (values - values.median()).abs().median() * 1.4826
        limit = median + 5 * max(mad, 1e-6)
        for _, bad in measured[values > limit].iterrows():
            exclusions.append({"participant_id": bad["participant_id"], "side": bad["side"], "step": "artefact QC",
                               "reason": f"{limit_text} {bad[column]:.3g} above median + 5 MAD ({limit:.3g})"})
    for _, bad in measured[measured["empty_fraction"] > 0.10].iterrows():
        exclusions.append({"participant_id": bad["participant_id"], "side": bad["side"], "step": "artefact QC",
                           "reason": f"{100 * bad['empty_fraction']:.0f}% of the crop empty (missing data)"})
    exclusions = pd.DataFrame(exclusions, columns=["participant_id", "side", "step", "reason"])
    # reasons name the failing file relative to the cohort (a page shows no local folder)
    from kneelib.data.qc import relative_to_root

    exclusions = relative_to_root(exclusions, root, columns=("reason",))
    knees["excluded"] = [((exclusions["participant_id"] == p) & (exclusions["side"] == s)).any()
                         for p, s in zip(knees["participant_id"], knees["side"])] if len(knees) else []
    dropped = set(exclusions["participant_id"])
    kept = cohort[~cohort["participant_id"].isin(dropped)].reset_index(drop=True)
    if len(kept) == 0:
        return PreprocessedCohort(np.zeros((0, 2, config.n_slices, config.image_size, config.image_size), np.float32),
                                  np.zeros((0, 2, config.n_slices, config.image_size, config.image_size), np.uint8),
                                  kept, exclusions, knees)
    images = np.stack([np.stack([results[(p, s)]["images"] for s in ("L", "R")]) for p in kept["participant_id"]])
    lesions = np.stack([np.stack([results[(p, s)]["lesions"] for s in ("L", "R")]) for p in kept["participant_id"]])
    return PreprocessedCohort(images.astype(np.float32), lesions.astype(np.uint8), kept, exclusions, knees)


#: Per worker process: the template knee's slices, keyed by (cohort root, template key).
_TEMPLATE_SLICES: dict[tuple[str, str], tuple[np.ndarray, tuple]] = {}


def _template_slices(root: str, template: dict):
    """The template knee's (slices, spacing), read once per worker process."""
    from kneelib.data.cohort import QCLog
    from kneelib.preprocess.registration import sagittal_slices

    key = (root, template["key"])
    if key not in _TEMPLATE_SLICES:
        loaded = _load_knee(_image_index(root), template["participant_id"], "R", QCLog())
        if loaded is None:
            raise ValueError(f"the registration template {template['key']} no longer loads from {root}")
        _TEMPLATE_SLICES.clear()
        _TEMPLATE_SLICES[key] = sagittal_slices(loaded[0])
    return _TEMPLATE_SLICES[key]


_IMAGE_INDEX: dict[tuple, object] = {}


def _image_index(root: str):
    """The cohort's image index, read once per worker process (again when ``contents.csv`` changes)."""
    from kneelib.data import read_image_index

    contents = Path(root) / "contents.csv"
    stat = contents.stat() if contents.is_file() else None
    key = (root, None if stat is None else (stat.st_mtime_ns, stat.st_size))
    if key not in _IMAGE_INDEX:
        _IMAGE_INDEX.clear()
        _IMAGE_INDEX[key] = read_image_index(root)  # the folder or its contents.csv
    return _IMAGE_INDEX[key]


def _knee_task(task: dict) -> dict:
    """One knee of :func:`preprocess_cohort` (a :func:`kneelib.executor.map_tasks` task).

    Loads the SAG IW TSE series, computes the knee's entry unless its content-addressed
    cache file exists, and returns only what the cohort step needs: the load failure's
    reason, or the entry's path, its exclusion reason and the knee's row fields (the
    images stay in the cache file, so a cluster worker sends back kilobytes).
    """
    from kneelib.data.cohort import QCLog
    from kneelib.data.errors import KneelibDataError
    from kneelib.preprocess.center_slice import CenterSliceNotFoundError, detect_pcl_center_slice
    from kneelib.preprocess.registration import preprocess_knee, sagittal_slices

    root, config = Path(task["root"]), task["config"]
    index = _image_index(task["root"])

    def truth_and_entry_path(folder):
        truth_row = None
        if task["truth"] is not None:
            relative = Path(folder).resolve().relative_to(root.resolve()).as_posix()
            match = [row for row in task["truth"] if row["folder"] == relative]
            truth_row = match[0] if match else None
        truth_files = [] if truth_row is None else [root / truth_row["labels_path"]]
        key = _cache_key(Path(folder), truth_files, config, task["template"]["key"])
        return truth_row, Path(task["cache"]) / key[:2] / f"{key}.npz"

    try:  # a cached knee is not read again: its entry's key is the series' content
        truth_row, path = truth_and_entry_path(index.find_series(task["participant_id"], 0,
                                                                 _IMAGE_SERIES[task["side"]]))
    except KneelibDataError:  # no such series, or two: the load below records why
        path = None
    if path is not None and path.is_file():
        with np.load(path) as stored:
            entry = {k: stored[k] for k in ("reason", "detected_center", "true_center", "n_slices_in_series")}
    else:
        qc = QCLog()
        loaded = _load_knee(index, task["participant_id"], task["side"], qc)
        if loaded is None:
            return {"load_reason": qc.rows[-1]["reason"]}
        volume, folder = loaded
        truth_row, path = truth_and_entry_path(folder)
        slices, spacing = _template_slices(task["root"], task["template"])
        template = {**task["template"], "slices": slices, "spacing": spacing}
        entry = _process_knee(volume, root, truth_row, config, template, detect_pcl_center_slice,
                              CenterSliceNotFoundError, preprocess_knee, sagittal_slices)
        _save_npz_atomic(path, **entry)
    artefact = None if truth_row is None else truth_row["artefact"]
    return {"load_reason": None, "path": str(path), "reason": str(entry["reason"]),
            "row": {"detected_center": int(entry["detected_center"]), "true_center": int(entry["true_center"]),
                    "n_slices_in_series": int(entry["n_slices_in_series"]),
                    "planted_artefact": artefact if isinstance(artefact, str) else ""}}


def _process_knee(volume, root, truth_row, config, template, detect, not_found_error, preprocess_knee,
                  sagittal_slices) -> dict:
    slices, spacing = sagittal_slices(volume)
    entry = {"reason": "", "detected_center": -1, "true_center": -1, "n_slices_in_series": len(slices),
             "images": np.zeros(0, np.float32), "lesions": np.zeros(0, np.uint8), "metric": np.zeros(1)}
    code = None
    if truth_row is not None:
        entry["true_center"], code = _knee_truth(Path(root), truth_row, volume)
    if config.center_slice == "middle":
        centre = (len(slices) - 1) // 2
    elif config.center_slice == "auto":
        try:
            centre = detect(slices, spacing).index
        except not_found_error as error:
            entry["reason"] = f"centre slice not found: {error}"
            return entry
    else:
        raise ValueError(f"center_slice must be 'auto' or 'middle', got {config.center_slice!r}")
    entry["detected_center"] = centre
    try:
        result = preprocess_knee(slices, spacing, centre, template["slices"], template["spacing"],
                                 template["centre_mm"], template["centre"], n_each_side=config.n_each_side,
                                 step=config.step, crop_mm=config.crop_mm, output_size=config.image_size,
                                 per_slice=config.per_slice, iterations=config.iterations,
                                 shrink_factors=tuple(config.shrink_factors), seed=config.seed,
                                 label_volumes=None if code is None else {"lesions": code})
    except ValueError as error:  # too few slices around the centre
        entry["reason"] = str(error)
        return entry
    entry["images"] = result.images
    entry["lesions"] = (result.labels["lesions"].astype(np.uint8) if code is not None
                        else np.zeros(result.images.shape, np.uint8))
    entry["metric"] = result.qc["metric"].to_numpy(float)
    return entry


def center_slice_accuracy(knees: pd.DataFrame) -> pd.DataFrame:
    """Automatic centre slice vs the ground-truth PCL slice: exact, within 1, within 2 slices, and
    the same for always taking the middle slice of the stack (knees with a known truth)."""
    known = knees[(knees["true_center"] >= 0) & (knees["detected_center"] >= 0)]
    if known.empty:
        return pd.DataFrame(columns=["method", "n knees", "exact %", "within 1 %", "within 2 %"])
    middle = (known["n_slices_in_series"] - 1) // 2
    rows = []
    for name, guess in (("automatic PCL detection", known["detected_center"]), ("middle slice of the stack", middle)):
        error = (guess - known["true_center"]).abs()
        rows.append({"method": name, "n knees": len(known), "exact %": 100 * (error == 0).mean(),
                     "within 1 %": 100 * (error <= 1).mean(), "within 2 %": 100 * (error <= 2).mean()})
    return pd.DataFrame(rows)
