"""The knees of the qMRI-biomarker chapter (paper 001, Morales et al.) and their segmentation splits.

Paper 001, Methods "Patient inclusion": a knee image volume of one time point is included when
it has a KL grade and matching SAG 3D DESS and SAG 2D MSME T2 volumes; only right knees had the
MSME series in the OAI ("22,464 image volumes from left patient knees were excluded due to
absence of 2D-MSME"). :func:`qmri_knee_table` lists those knees (one row per knee and visit)
with age, BMI and sex, from a real OAI download or the synthetic cohort alike (read through
:mod:`kneelib.data`).

Table 4: the segmentation models were trained, validated and tested on splits "with no patient
overlap", the demographics tested for independence across the splits
(:func:`kneelib.stats.group_tests.split_independence`). :func:`segmentation_splits` draws
subject-level splits of the sizes asked for.

:func:`load_dess_volumes` reads the DESS volumes with the synthetic ground-truth tissue labels
(:func:`kneelib.synth.ground_truth.load_series_with_truth`) on a chosen grid, as
``(slices, rows, columns)`` arrays (slices run mediolaterally). The real public data sets
read here (never copied): the pyKNEEr DESS and T1rho series and the pymskt segmentation and MSME
T2 series (:func:`read_pymskt_segmentation`, :func:`read_volume_slices`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kneelib.data.errors import KneelibDataError

__all__ = [
    "DESS_SERIES", "MSME_SERIES", "PYMSKT_LABELS", "qmri_knee_table", "segmentation_splits",
    "DessVolumes", "load_dess_volumes", "read_volume_slices", "read_pymskt_segmentation",
]

#: Series of a right knee the chapter needs (OAI SeriesDescription).
DESS_SERIES = "SAG_3D_DESS_RIGHT"
MSME_SERIES = "SAG_T2_MAP_RIGHT"

#: pymskt's label codes (``pymskt_knee_mri/SOURCE.md``) -> tissue names of
#: :data:`kneelib.synth.spec.TISSUE_LABELS`.
PYMSKT_LABELS = {1: "femoral_cartilage", 2: "tibial_cartilage_medial", 3: "tibial_cartilage_lateral",
                 4: "patellar_cartilage", 5: "femur", 6: "tibia", 7: "patella", 8: "fibula",
                 9: "meniscus_lateral", 10: "meniscus_medial"}


def qmri_knee_table(root: str | Path, visits: Sequence[int] = (0, 12)) -> pd.DataFrame:
    """Right knees with a SAG 3D DESS, a SAG MSME T2 series and a KL grade, per visit.

    Parameters
    ----------
    root : path
        An OAI root (real download or synthetic cohort) with ``contents.csv`` and clinical tables.
    visits : sequence of int
        Visit months.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``visit_month``, ``kl_grade``, ``age``, ``bmi``, ``sex`` (1 male,
        2 female), one row per included knee and visit, sorted.

    Raises
    ------
    KneelibDataError
        The root has no image index, or no knee qualifies.
    """
    from kneelib.data import knee_table, read_image_index

    index = read_image_index(root).table
    index = index[index["VISIT"].isin(list(visits))]
    have = {}
    for series in (DESS_SERIES, MSME_SERIES):
        rows = index[index["SeriesDescription"] == series]
        have[series] = set(zip(rows["ParticipantID"].astype(str), rows["VISIT"].astype(int)))
    both = have[DESS_SERIES] & have[MSME_SERIES]
    clinical = knee_table(root, ["kl_grade", "age_years", "bmi_kg_m2", "sex"], visits=tuple(visits))
    clinical = clinical[clinical["SIDE"] == 1]
    keys = list(zip(clinical["ID"].astype(str), clinical["VISIT"].astype(int)))
    keep = np.array([k in both for k in keys]) & clinical["kl_grade"].notna().to_numpy()
    table = pd.DataFrame({"participant_id": clinical["ID"].astype(str).to_numpy()[keep],
                          "visit_month": clinical["VISIT"].astype(int).to_numpy()[keep],
                          "kl_grade": clinical["kl_grade"].to_numpy()[keep].astype(int),
                          "age": clinical["age_years"].to_numpy(float)[keep],
                          "bmi": clinical["bmi_kg_m2"].to_numpy(float)[keep],
                          "sex": clinical["sex"].to_numpy()[keep]})
    if table.empty:
        raise KneelibDataError(f"{root}: no right knee has {DESS_SERIES}, {MSME_SERIES} and a KL grade "
                               f"at visits {list(visits)}", path=root, reason="no qualifying knee")
    return table.sort_values(["participant_id", "visit_month"]).reset_index(drop=True)


def segmentation_splits(knees: pd.DataFrame, n_subjects: dict[str, int], seed: int = 0,
                        visits: Sequence[int] | None = None) -> pd.DataFrame:
    """Subject-level training / validation / test splits (paper 001, Table 4: no patient overlap).

    Parameters
    ----------
    knees : DataFrame
        :func:`qmri_knee_table`.
    n_subjects : dict
        Subjects per split, e.g. ``{"train": 16, "valid": 4, "test": 12}`` (in that order).
    seed : int
        Seed of the subject shuffle.
    visits : sequence of int, optional
        Keep only these visit months (default all of a chosen subject's).

    Returns
    -------
    DataFrame
        The chosen knees with a ``split`` column; every subject in exactly one split.

    Raises
    ------
    KneelibDataError
        Fewer subjects than requested.
    """
    table = knees if visits is None else knees[knees["visit_month"].isin(list(visits))]
    subjects = np.array(sorted(table["participant_id"].unique()))
    wanted = sum(int(n) for n in n_subjects.values())
    if wanted > len(subjects):
        raise KneelibDataError(f"segmentation splits need {wanted} subjects; the cohort has {len(subjects)}",
                               reason="too few subjects")
    order = np.random.default_rng(seed).permutation(subjects)
    split_of, start = {}, 0
    for name, n in n_subjects.items():
        split_of.update({s: name for s in order[start:start + int(n)]})
        start += int(n)
    chosen = table[table["participant_id"].isin(split_of)].copy()
    chosen["split"] = chosen["participant_id"].map(split_of)
    return chosen.reset_index(drop=True)


@dataclass
class DessVolumes:
    """DESS images and ground-truth tissue labels on one grid, ``(slices, rows, columns)``.

    Attributes
    ----------
    images : list of float32 arrays
    tissue_labels : list of uint8 arrays
        :data:`kneelib.synth.spec.TISSUE_LABELS` codes.
    spacing_mm : tuple of float
        Voxel size of the (resampled) grid, per array axis.
    native_spacing_mm : tuple of float
    knees : DataFrame
        The rows loaded (same order); failures are in ``exclusions``.
    exclusions : DataFrame
    """

    images: list
    tissue_labels: list
    spacing_mm: tuple
    native_spacing_mm: tuple
    knees: pd.DataFrame
    exclusions: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_dess_volumes(root: str | Path, knees: pd.DataFrame, target_mm: float | None = None) -> DessVolumes:
    """DESS volumes with their ground-truth tissue labels, resampled to ``target_mm`` (None: native).

    A knee whose series or labels cannot be read is recorded in ``exclusions`` with the reason
    (a :class:`~kneelib.data.errors.KneelibDataError`) and skipped.
    """
    from kneelib.data import read_image_index
    from kneelib.synth.ground_truth import load_series_with_truth, series_truth_table
    from kneelib.train.segmentation import resample_to_spacing

    index = read_image_index(root)
    truth = series_truth_table(root)
    images, labels, rows, excluded, spacing, native = [], [], [], [], None, None
    for i, knee in knees.iterrows():
        try:
            volume, tissue, _ = load_series_with_truth(root, index, truth, knee["participant_id"],
                                                       int(knee["visit_month"]), DESS_SERIES)
        except (KneelibDataError, FileNotFoundError) as error:
            excluded.append({"participant_id": knee["participant_id"], "visit_month": knee["visit_month"],
                             "reason": str(error).split("\n")[0]})
            continue
        image = volume.slices().astype(np.float32)
        native = tuple(float(s) for s in volume.spacing_mm[::-1])
        if target_mm is not None:
            image, spacing = resample_to_spacing(image, native, target_mm)
            tissue, _ = resample_to_spacing(tissue, native, target_mm, order=0)
        else:
            spacing = native
        images.append(image.astype(np.float32))
        labels.append(np.asarray(tissue, dtype=np.uint8))
        rows.append(i)
    return DessVolumes(images, labels, spacing, native, knees.loc[rows].reset_index(drop=True),
                       pd.DataFrame(excluded, columns=["participant_id", "visit_month", "reason"]))


def read_volume_slices(folders) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, ...]]:
    """A real DICOM series as ``(slices, rows, columns[, echoes])``, its spacing and echo times.

    ``folders``: one folder or several of one acquisition (the pyKNEEr T1rho spin-lock folders).
    """
    from kneelib.data import read_dicom_series

    volume = read_dicom_series(folders)
    array = np.asarray(volume.array)
    array = np.transpose(array, (2, 1, 0) if array.ndim == 3 else (2, 1, 0, 3))
    return array.astype(np.float32), tuple(float(s) for s in volume.spacing_mm[::-1]), tuple(volume.echo_times_ms)


def read_pymskt_segmentation(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The pymskt knee segmentation (NRRD) as tissue codes of :data:`kneelib.synth.spec.TISSUE_LABELS`.

    Returns ``(labels (slices, rows, columns) uint8, spacing_mm)``; slices run mediolaterally
    (the OAI DESS grid, 0.70 x 0.365 x 0.365 mm).

    Raises
    ------
    KneelibDataError
        The file is missing or holds codes outside :data:`PYMSKT_LABELS`.
    """
    import SimpleITK as sitk

    from kneelib.synth.spec import TISSUE_LABELS

    path = Path(path)
    if not path.is_file():
        raise KneelibDataError(f"{path}: no such segmentation file", path=path, reason="missing file")
    image = sitk.ReadImage(str(path))
    codes = sitk.GetArrayFromImage(image)
    unknown = sorted(set(np.unique(codes).tolist()) - {0, *PYMSKT_LABELS})
    if unknown:
        raise KneelibDataError(f"{path}: label codes {unknown} are not pymskt's", path=path, reason="unknown labels")
    lookup = np.zeros(256, dtype=np.uint8)
    for code, name in PYMSKT_LABELS.items():
        lookup[code] = TISSUE_LABELS[name]
    return lookup[codes], tuple(float(s) for s in image.GetSpacing()[::-1])
