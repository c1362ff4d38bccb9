"""Accuracy of the bone and cartilage segmentations of paper 001 (supplement 003).

Supplement 003, *Bone segmentation inference and ensembling* and Table S1:

- the Dice similarity coefficient (DSC), "the doubled proportion of correctly classified
  pixels divided by the total number of pixels segmented and in the ground truth"
  (:func:`dice_coefficient`);
- the mean point-to-surface distance (MPTS), "the mean of the errors between each
  closest points in two 3D surfaces" (:func:`mean_point_to_surface_distance`, mm, with
  the voxel spacing);
- per structure over the test volumes with 95% CIs (:func:`structure_table`): the CIs
  resample *subjects* (cluster bootstrap, :func:`kneelib.stats.bootstrap.resample_indices`);
- Supplementary Fig. S2: agreement, false positive and false negative voxels
  (:func:`error_map`, colours :data:`ERROR_COLOURS`).

Paper 001, *Patient inclusion*: a volume whose segmented volume lies "outside of three
standard deviations from the mean training segmentation" is excluded
(:func:`volume_qc`, which records the reason and never raises on a bad volume).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from kneelib.models.segmentation import SegmentationInputError
from kneelib.stats.bootstrap import bootstrap_unit, resample_indices

__all__ = [
    "ERROR_CODES",
    "ERROR_COLOURS",
    "QC_SD_LIMIT",
    "dice_coefficient",
    "surface_voxels",
    "surface_distances",
    "mean_point_to_surface_distance",
    "segmented_volumes_ml",
    "segmentation_metrics",
    "structure_table",
    "volume_qc",
    "error_map",
]

#: Codes of :func:`error_map`.
ERROR_CODES: dict[str, int] = {"background": 0, "agreement": 1, "false_positive": 2, "false_negative": 3,
                               "wrong_structure": 4}

#: Colours of Supplementary Fig. S2 (agreement green, false positive cyan, false negative
#: magenta); a voxel given another structure's label (not in the figure) is yellow.
ERROR_COLOURS: dict[str, str] = {"agreement": "#00c000", "false_positive": "#00e5ff", "false_negative": "#ff00ff",
                                 "wrong_structure": "#ffd700"}

#: Standard deviations from the mean training volume beyond which a segmentation fails QC (paper 001).
QC_SD_LIMIT = 3.0


def _masks(prediction, truth, what: str) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise SegmentationInputError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape",
                                     what=what)
    return prediction.astype(bool), truth.astype(bool)


def _spacing(spacing_mm, ndim: int, what: str) -> np.ndarray:
    spacing = np.ones(ndim) if spacing_mm is None else np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (ndim,) or not np.all(spacing > 0):
        raise SegmentationInputError(f"spacing {spacing_mm} does not fit a {ndim}-D volume", what=what)
    return spacing


def dice_coefficient(prediction, truth) -> float:
    """DSC ``2 |P & T| / (|P| + |T|)`` of two binary masks; NaN when both are empty.

    Raises
    ------
    SegmentationInputError
        The masks differ in shape.
    """
    p, t = _masks(prediction, truth, "dice_coefficient")
    total = int(p.sum()) + int(t.sum())
    return float("nan") if total == 0 else 2.0 * int((p & t).sum()) / total


def surface_voxels(mask) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the volume border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(source, target, spacing_mm: Sequence[float] | None = None) -> np.ndarray:
    """Distance (mm) from each surface voxel centre of ``source`` to the nearest of ``target``.

    Empty when ``source`` is empty; all ``inf`` when ``target`` is empty and ``source`` not.
    """
    s, t = _masks(source, target, "surface_distances")
    spacing = _spacing(spacing_mm, s.ndim, "surface_distances")
    s_surface, t_surface = surface_voxels(s), surface_voxels(t)
    if not s_surface.any():
        return np.zeros(0)
    if not t_surface.any():
        return np.full(int(s_surface.sum()), np.inf)
    distance = ndimage.distance_transform_edt(~t_surface, sampling=spacing)
    return distance[s_surface]


def mean_point_to_surface_distance(prediction, truth, spacing_mm: Sequence[float] | None = None) -> float:
    """Symmetric MPTS (mm): mean closest-surface distance over both surfaces' points.

    The surface points of the prediction are measured to the truth's surface and those
    of the truth to the prediction's; the MPTS is the mean of all of these distances
    (supplement 003: "the mean of the errors between each closest points in two 3D
    surfaces"). Distances between voxel centres, scaled by ``spacing_mm``.

    Returns
    -------
    float
        NaN when either mask is empty (no surface to measure to; the DSC then shows
        the failure).
    """
    p, t = _masks(prediction, truth, "mean_point_to_surface_distance")
    if not p.any() or not t.any():
        return float("nan")
    distances = np.concatenate([surface_distances(p, t, spacing_mm), surface_distances(t, p, spacing_mm)])
    return float(distances.mean())


def segmented_volumes_ml(labels, spacing_mm: Sequence[float], class_names: Sequence[str]) -> dict[str, float]:
    """Volume (mL) of every class but the background (index 0) of a label volume."""
    labels = np.asarray(labels)
    spacing = _spacing(spacing_mm, labels.ndim, "segmented_volumes_ml")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names))
    return {name: float(counts[i]) * voxel_ml for i, name in enumerate(class_names) if i > 0}


def segmentation_metrics(prediction, truth, spacing_mm: Sequence[float], class_names: Sequence[str]) -> pd.DataFrame:
    """DSC, MPTS and volumes of each structure (class index >= 1) of one volume.

    Parameters
    ----------
    prediction, truth : arrays of int, same shape
        Class indices (e.g. :func:`kneelib.models.segmentation.network_targets`).
    spacing_mm : sequence of float
        Voxel size per axis.
    class_names : sequence of str
        Name of each class index; index 0 is the background and is not scored.

    Returns
    -------
    pandas.DataFrame
        ``structure``, ``dsc``, ``mpts_mm``, ``volume_ml``, ``truth_volume_ml``.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    _masks(prediction, truth, "segmentation_metrics")
    spacing = _spacing(spacing_mm, prediction.ndim, "segmentation_metrics")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        p, t = prediction == index, truth == index
        rows.append({"structure": name, "dsc": dice_coefficient(p, t),
                     "mpts_mm": mean_point_to_surface_distance(p, t, spacing),
                     "volume_ml": float(p.sum()) * voxel_ml, "truth_volume_ml": float(t.sum()) * voxel_ml})
    return pd.DataFrame(rows)


def structure_table(per_volume: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                    subject_column: str = "subject_id") -> pd.DataFrame:
    """Mean DSC and MPTS per structure over test volumes with subject-level bootstrap CIs.

    Parameters
    ----------
    per_volume : pandas.DataFrame
        One row per volume and structure: ``structure``, ``dsc``, ``mpts_mm`` and the
        subject of the volume in ``subject_column`` (rows of :func:`segmentation_metrics`
        with the subject added). Two visits of one subject enter as one cluster.
    n_boot, level, seed
        Bootstrap resamples, coverage and seed (percentile intervals).

    Returns
    -------
    pandas.DataFrame
        Per structure (in order of first appearance): ``n_volumes``, ``n_subjects``,
        ``dsc``, ``dsc_low``, ``dsc_high``, ``mpts_mm``, ``mpts_low``, ``mpts_high``
        (means over volumes; NaN values, e.g. an undefined MPTS, are left out of a mean)
        and ``unit`` (``"subjects"``).

    Raises
    ------
    SegmentationInputError
        Missing columns.
    """
    needed = {"structure", "dsc", "mpts_mm", subject_column}
    missing = needed - set(per_volume.columns)
    if missing:
        raise SegmentationInputError(f"per-volume table lacks columns {sorted(missing)}", what="structure_table")
    alpha = (1 - level) / 2
    rows = []
    for structure, table in per_volume.groupby("structure", sort=False):
        subjects = table[subject_column].to_numpy()
        row = {"structure": structure, "n_volumes": len(table), "n_subjects": int(pd.unique(subjects).size)}
        values = {c: table[c].to_numpy(dtype=float) for c in ("dsc", "mpts_mm")}
        draws = {c: [] for c in values}
        for idx in resample_indices(len(table), n_boot, groups=subjects, seed=seed):
            for column, v in values.items():
                sample = v[idx]
                if np.isfinite(sample).any():
                    draws[column].append(np.nanmean(sample))
        for column, prefix in (("dsc", "dsc"), ("mpts_mm", "mpts")):
            finite = values[column][np.isfinite(values[column])]
            row[column] = float(finite.mean()) if finite.size else float("nan")
            low, high = (np.quantile(draws[column], [alpha, 1 - alpha]) if draws[column] else (np.nan, np.nan))
            row[f"{prefix}_low"], row[f"{prefix}_high"] = float(low), float(high)
        row["unit"] = bootstrap_unit(subjects)
        rows.append(row)
    return pd.DataFrame(rows)


def volume_qc(volumes: pd.DataFrame, training_volumes: pd.DataFrame, n_sd: float = QC_SD_LIMIT) -> pd.DataFrame:
    """The paper's QC rule: exclude a segmentation whose volume lies beyond ``n_sd`` SD.

    Paper 001, *Patient inclusion*: "poor inference quality ... defined as a
    segmentation volume outside of three standard deviations from the mean training
    segmentation".

    Parameters
    ----------
    volumes : pandas.DataFrame
        One row per segmented volume (its index identifies it), one column per structure
        with the segmented volume (e.g. :func:`segmented_volumes_ml`).
    training_volumes : pandas.DataFrame
        The same columns for the training segmentations (the reference mean and SD).
    n_sd : float
        Limit in standard deviations (3).

    Returns
    -------
    pandas.DataFrame
        Indexed like ``volumes``: ``excluded`` (bool), ``reason`` (why it was excluded,
        ``""`` when kept), ``notes`` (structures that could not be checked), and
        ``z_<structure>`` per structure. A missing or non-finite volume excludes the
        row with its reason; a structure without at least two finite training volumes
        or with zero SD is not checked (noted). Never raises for a bad row.
    """
    reference = {}
    notes = []
    for column in volumes.columns:
        train = (pd.to_numeric(training_volumes[column], errors="coerce").to_numpy(dtype=float)
                 if column in training_volumes.columns else np.array([]))
        train = train[np.isfinite(train)]
        sd = float(train.std(ddof=1)) if train.size >= 2 else float("nan")
        if not np.isfinite(sd) or sd == 0:
            notes.append(f"{column} not checked ({train.size} finite training volumes, SD {sd:g})")
            continue
        reference[column] = (float(train.mean()), sd)
    rows = []
    for key, row in volumes.iterrows():
        reasons = []
        out = {}
        for column, (mean, sd) in reference.items():
            value = pd.to_numeric(pd.Series([row[column]]), errors="coerce").iloc[0]
            if not np.isfinite(value):
                reasons.append(f"{column} volume missing")
                out[f"z_{column}"] = float("nan")
                continue
            z = (float(value) - mean) / sd
            out[f"z_{column}"] = z
            if abs(z) > n_sd:
                reasons.append(f"{column} volume {float(value):.3g} is {z:+.1f} SD from the training mean "
                               f"{mean:.3g} (limit {n_sd:g} SD)")
        rows.append({"excluded": bool(reasons), "reason": "; ".join(reasons), "notes": "; ".join(notes), **out})
    return pd.DataFrame(rows, index=volumes.index)


def error_map(prediction, truth, label: int | None = None) -> np.ndarray:
    """Voxel codes of Supplementary Fig. S2 (:data:`ERROR_CODES`).

    Parameters
    ----------
    prediction, truth : arrays of int (or bool), same shape
    label : int, optional
        Score one class only (other labels count as background). Without it every
        non-zero label is foreground, and a voxel that both call foreground with
        different labels is ``wrong_structure``.

    Returns
    -------
    numpy.ndarray of uint8
        0 background in both, 1 agreement, 2 false positive, 3 false negative,
        4 wrong structure.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    _masks(prediction, truth, "error_map")
    if label is not None:
        prediction, truth = prediction == label, truth == label
    p, t = prediction != 0, truth != 0
    codes = np.zeros(prediction.shape, dtype=np.uint8)
    codes[p & t & (prediction == truth)] = ERROR_CODES["agreement"]
    codes[p & t & (prediction != truth)] = ERROR_CODES["wrong_structure"]
    codes[p & ~t] = ERROR_CODES["false_positive"]
    codes[~p & t] = ERROR_CODES["false_negative"]
    return codes
