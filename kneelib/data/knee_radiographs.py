"""Knee-level table of an OAI-format radiograph cohort: grades, image folder, landmarks.

Data step of paper 004 (Tiulpin & Saarakkala 2020) on the synthetic OAI-format
cohorts of :mod:`kneelib.synth.cohort`: one row per knee image (participant, visit,
side) with the KL grade and the six OARSI feature grades of the clinical table
``kXR_SQ_BU{VV}``, the bilateral PA radiograph's series folder from the image index
(``contents.csv``) and the landmark ground truth
(``ground_truth/radiograph_landmarks.csv``) that trains and checks the knee localiser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["GRADE_TASKS", "TASK_LABELS", "TASK_GRADES", "RADIOGRAPH_LANDMARKS", "load_synthetic_knees",
           "read_radiographs"]

#: Grade columns of the knee table (the heads of paper 004's network), in the paper's table order.
GRADE_TASKS: tuple[str, ...] = ("kl", "osteophyte_fl", "osteophyte_fm", "osteophyte_tl", "osteophyte_tm",
                                "jsn_lateral", "jsn_medial")

#: Head -> column label of the paper's tables (FO/TO: femoral/tibial osteophytes; L/M: compartment).
TASK_LABELS: dict[str, str] = {
    "kl": "KL", "osteophyte_fl": "FO L", "osteophyte_fm": "FO M", "osteophyte_tl": "TO L",
    "osteophyte_tm": "TO M", "jsn_lateral": "JSN L", "jsn_medial": "JSN M",
}

#: Head -> its grade scale: KL 0-4, OARSI atlas features 0-3 (the kappa weights use the full scale).
TASK_GRADES: dict[str, tuple[int, ...]] = {task: tuple(range(5 if task == "kl" else 4)) for task in GRADE_TASKS}

#: Landmarks of ``radiograph_landmarks.csv`` carried into the knee table.
RADIOGRAPH_LANDMARKS: tuple[str, ...] = (
    "joint_centre", "plateau_lateral", "plateau_medial", "plateau_margin_lateral", "plateau_margin_medial",
    "condyle_lowest_lateral", "condyle_lowest_medial")
_XR_SERIES = "Bilateral PA Fixed Flexion Knee"


def load_synthetic_knees(root, visits=(0, 12)) -> pd.DataFrame:
    """One row per knee image of a synthetic OAI-format cohort, with grades and landmarks.

    Grades come from the clinical table ``kXR_SQ_BU{VV}`` through
    :func:`kneelib.data.knee_table` (missing grades coded -1, as the training code
    expects); the radiograph folder from the image index (``contents.csv``); the landmark
    ground truth from ``ground_truth/radiograph_landmarks.csv``. Knees without a
    radiograph or without landmarks are dropped and listed in ``attrs["qc"]``.

    Parameters
    ----------
    root : path
        Cohort folder written by :func:`kneelib.synth.cohort.generate_cohort`.
    visits : tuple of int
        Visit months to read (paper 004 uses every visit with a radiograph).

    Returns
    -------
    DataFrame
        ``participant_id`` (str, the subject of every CI's cluster bootstrap),
        ``visit_month``, ``side``, ``path`` (series folder), ``kl_grade``, one column per
        :data:`GRADE_TASKS`, and ``<landmark>_row/_col`` in radiograph pixels.

    Raises
    ------
    FileNotFoundError
        If ``root`` has no landmark ground truth (not a synthetic cohort).
    """
    from kneelib.data import knee_table, read_image_index
    from kneelib.data.errors import KneelibDataError
    from kneelib.preprocess.knee_localisation import landmark_table_to_points

    root = Path(root)
    landmark_file = root / "ground_truth" / "radiograph_landmarks.csv"
    if not landmark_file.is_file():
        raise FileNotFoundError(f"no landmark ground truth at {landmark_file} (is {root} a synthetic cohort?)")
    variables = ["kl_grade" if task == "kl" else task for task in GRADE_TASKS]
    grades = knee_table(root, variables, visits=tuple(visits))
    grades = grades.rename(columns={"ID": "participant_id", "VISIT": "visit_month"})
    grades["kl"] = grades["kl_grade"]
    grades["side"] = grades.pop("SIDE").map({1: "R", 2: "L"})
    grades["participant_id"] = grades["participant_id"].astype(str)
    for task in [*GRADE_TASKS, "kl_grade"]:
        grades[task] = pd.to_numeric(grades[task], errors="coerce").fillna(-1).astype(int)
    points = landmark_table_to_points(pd.read_csv(landmark_file), names=RADIOGRAPH_LANDMARKS)
    points["participant_id"] = points["participant_id"].astype(str)
    index = read_image_index(root / "contents.csv")
    paths, qc = [], []
    for row in grades.itertuples():
        try:
            paths.append(str(index.find_series(row.participant_id, int(row.visit_month), _XR_SERIES)))
        except KneelibDataError as err:
            paths.append(None)
            qc.append({"participant_id": row.participant_id, "visit_month": row.visit_month, "side": row.side,
                       "reason": str(err)})
    grades["path"] = paths
    knees = grades.merge(points.drop(columns="folder"), on=["participant_id", "visit_month", "side"],
                         how="left")
    no_landmarks = knees["joint_centre_row"].isna() & knees["path"].notna()
    for row in knees[no_landmarks].itertuples():
        qc.append({"participant_id": row.participant_id, "visit_month": row.visit_month, "side": row.side,
                   "reason": "no landmark ground truth"})
    knees = knees[knees["path"].notna() & ~no_landmarks].reset_index(drop=True)
    knees.attrs["qc"] = pd.DataFrame(qc, columns=["participant_id", "visit_month", "side", "reason"])
    return knees


def read_radiographs(knees: pd.DataFrame, progress: bool = True) -> dict[str, tuple[np.ndarray, float]]:
    """Series folder -> (pixels as float32, pixel spacing mm), each bilateral image read once.

    Raises
    ------
    KneelibDataError
        If a radiograph cannot be read, or its pixels are not square (the crop geometry
        of :mod:`kneelib.preprocess.knee_localisation` assumes one spacing).
    """
    from tqdm.auto import tqdm

    from kneelib.data import read_radiograph
    from kneelib.data.errors import KneelibDataError

    images = {}
    for path in tqdm(sorted(set(knees["path"])), desc="reading radiographs", disable=not progress):
        radiograph = read_radiograph(path)
        row_mm, col_mm = radiograph.pixel_spacing_mm
        if abs(row_mm - col_mm) > 1e-6:
            raise KneelibDataError(f"{path}: non-square pixels {radiograph.pixel_spacing_mm} are not supported",
                                   path=path, reason="non-square pixels")
        images[path] = (radiograph.pixels.astype(np.float32), float(row_mm))
    return images
