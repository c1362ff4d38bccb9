"""Reader of the Chen et al. (2019) knee KL radiograph crops.

``$KNEELIB_DATA/chen_kl_radiographs`` holds 224 x 224 grey PNG knee crops from OAI
baseline PA radiographs with the OAI central-reading KL grade (see its SOURCE.md):
``images/<split>/<kl>/<OAI id><L|R>.png`` and ``labels.csv`` with ``relpath, split,
kl_grade, oai_id, side, sha256``. This is the real-data test bed of paper 004's KL
head (Tiulpin & Saarakkala 2020); the data set's ``test`` split is deliberately absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.errors import KneelibDataError

__all__ = ["ChenKLDataError", "CHEN_KL_FOLDER", "read_chen_kl", "carve_internal_validation",
           "stratified_subject_subset", "merge_sparse_grades", "KLCohort", "load_chen_kl_cohort",
           "cohort_summary"]

#: Folder name of the data set under the data root.
CHEN_KL_FOLDER = "chen_kl_radiographs"
_REQUIRED_COLUMNS = ("relpath", "split", "kl_grade", "oai_id", "side")


class ChenKLDataError(KneelibDataError, FileNotFoundError):
    """The Chen KL folder or its label file is missing or malformed.

    A :class:`~kneelib.data.errors.KneelibDataError` (``ValueError``) with ``path`` and
    ``reason``, and a ``FileNotFoundError`` for callers that test for missing data.
    """


def read_chen_kl(root: str | Path | None = None, check_files: bool = True) -> pd.DataFrame:
    """Table of the Chen KL images: one row per knee image.

    Parameters
    ----------
    root : path, optional
        The ``chen_kl_radiographs`` folder (default ``$KNEELIB_DATA/chen_kl_radiographs``).
    check_files : bool
        Exclude rows whose image file is absent (recorded in the QC table).

    Returns
    -------
    DataFrame
        Columns ``path`` (absolute), ``relpath``, ``split``, ``kl_grade`` (int 0-4),
        ``oai_id`` (str, 7 digits), ``side`` (``L``/``R``), ``subject_id``.
        ``table.attrs["qc"]`` is a DataFrame of excluded rows (``relpath, reason``).

    Raises
    ------
    ChenKLDataError
        If the folder or ``labels.csv`` is missing, a required column is absent,
        or no usable row remains.
    """
    if root is None:
        from kneelib.config import data_root

        root = data_root() / CHEN_KL_FOLDER
    root = Path(root)
    if not root.is_dir():
        raise ChenKLDataError(
            f"Chen KL radiograph folder not found: {root}; set KNEELIB_DATA to the folder that "
            f"holds '{CHEN_KL_FOLDER}/' (CI uses ../shared/data)", path=root, reason="folder missing")
    labels_path = root / "labels.csv"
    if not labels_path.is_file():
        raise ChenKLDataError(f"label file missing: {labels_path} (expected columns {list(_REQUIRED_COLUMNS)})",
                              path=labels_path, reason="label file missing")
    labels = pd.read_csv(labels_path, dtype={"oai_id": str, "side": str, "split": str, "relpath": str})
    missing = [c for c in _REQUIRED_COLUMNS if c not in labels.columns]
    if missing:
        raise ChenKLDataError(f"{labels_path} lacks column(s) {missing}", path=labels_path,
                              reason=f"missing column(s) {missing}")

    qc_rows = []
    grade = pd.to_numeric(labels["kl_grade"], errors="coerce")
    bad_grade = ~grade.isin([0, 1, 2, 3, 4])
    qc_rows += [(r, "kl_grade not in 0-4") for r in labels.loc[bad_grade, "relpath"]]
    side = labels["side"].astype(str).str.upper()
    bad_side = ~side.isin(["L", "R"]) & ~bad_grade
    qc_rows += [(r, f"side {s!r} not L/R") for r, s in zip(labels.loc[bad_side, "relpath"], side[bad_side])]
    keep = ~bad_grade & ~bad_side
    table = pd.DataFrame({
        "path": [str(root / r) for r in labels["relpath"]],
        "relpath": labels["relpath"],
        "split": labels["split"].astype(str),
        "kl_grade": grade.fillna(-1).astype(int),
        "oai_id": labels["oai_id"].astype(str).str.zfill(7),
        "side": side,
    })[keep].reset_index(drop=True)
    if check_files:
        exists = np.array([Path(p).is_file() for p in table["path"]], dtype=bool)
        qc_rows += [(r, "image file missing") for r in table.loc[~exists, "relpath"]]
        table = table[exists].reset_index(drop=True)
    if table.empty:
        raise ChenKLDataError(f"no usable rows in {labels_path}", path=labels_path, reason="no usable rows")
    table["subject_id"] = table["oai_id"]  # one OAI participant id per person (SOURCE.md); both knees share it
    table.attrs["qc"] = pd.DataFrame(qc_rows, columns=["relpath", "reason"])
    return table


def carve_internal_validation(table: pd.DataFrame, fraction: float = 0.15, seed: int = 0,
                              grade_column: str = "kl_grade", subject_column: str = "subject_id"
                              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a training table into (train, internal validation) by subject, grade-stratified.

    Both knees of one participant land on the same side of the split (paper 004 uses
    subject-wise stratified splits, *Training strategy*). The internal validation
    set steers model selection, so the reported ``val`` split stays untouched.

    Parameters
    ----------
    fraction : float
        Approximate share of subjects held out (one fold of ``round(1/fraction)``
        stratified group folds).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < fraction < 0.5:
        raise ValueError(f"fraction must lie in (0, 0.5), got {fraction}")
    n_splits = max(2, int(round(1 / fraction)))
    if table[subject_column].nunique() < n_splits:
        raise ValueError(f"{table[subject_column].nunique()} subjects cannot be split into {n_splits} parts")
    strata = merge_sparse_grades(table[grade_column], table[subject_column], n_splits)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, hold_idx = next(folds.split(table, strata, groups=table[subject_column]))
    return table.iloc[train_idx].reset_index(drop=True), table.iloc[hold_idx].reset_index(drop=True)


def stratified_subject_subset(table: pd.DataFrame, n_subjects: int | None, seed: int = 0,
                              grade_column: str = "kl_grade", subject_column: str = "subject_id"
                              ) -> pd.DataFrame:
    """About ``n_subjects`` subjects (all their knees), keeping the grade mix; ``None`` = all.

    Subjects are stratified by their highest grade.
    """
    subjects = table.groupby(subject_column)[grade_column].max()
    if n_subjects is None or n_subjects >= len(subjects):
        return table.reset_index(drop=True)
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    rng = np.random.default_rng(seed)
    share = n_subjects / len(subjects)
    chosen = []
    for _, group in subjects.groupby(subjects):
        k = max(1, int(round(share * len(group))))
        chosen.extend(rng.choice(group.index.to_numpy(), size=min(k, len(group)), replace=False))
    return table[table[subject_column].isin(set(chosen))].reset_index(drop=True)


def merge_sparse_grades(grades, subjects, min_subjects: int) -> np.ndarray:
    """Stratum per row: the grade, with grades of fewer than ``min_subjects`` subjects merged.

    A stratified split into ``k`` parts needs at least ``k`` members per stratum
    (scikit-learn warns and splits unevenly otherwise). A grade held by fewer than
    ``min_subjects`` subjects joins the adjacent stratum with fewer subjects (rare
    severe grades join each other before a common mild one), so the strata stay ordinal
    and every part still gets a share of the rare grades.

    Parameters
    ----------
    grades : array-like of int
        Grade per row (e.g. KL 0-4).
    subjects : array-like
        Subject per row.
    min_subjects : int
        Smallest allowed number of subjects per stratum (the number of parts).

    Returns
    -------
    ndarray of int
        The merged grade (the lowest grade of its stratum) per row.
    """
    grades = np.asarray(grades).astype(int)
    subjects = np.asarray(subjects)
    strata = grades.copy()
    while True:
        values = np.unique(strata)
        if len(values) < 2:
            return strata
        counts = np.array([len(np.unique(subjects[strata == v])) for v in values])
        sparse = np.flatnonzero(counts < min_subjects)
        if len(sparse) == 0:
            return strata
        i = int(sparse[np.argmin(counts[sparse])])
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(values)]
        neighbour = values[min(neighbours, key=lambda j: (counts[j], j))]
        low, high = sorted((int(values[i]), int(neighbour)))
        strata[(strata == low) | (strata == high)] = low


@dataclass
class KLCohort:
    """Tables of the real KL chapter: training, internal validation (model selection), reported val.

    Every table has ``subject_id`` (the OAI participant id of ``labels.csv``; both
    knees of a person share it), which the chapter's bootstrap CIs resample.
    """

    train: pd.DataFrame
    internal_val: pd.DataFrame
    val: pd.DataFrame
    qc: pd.DataFrame


def load_chen_kl_cohort(internal_fraction: float = 0.15, n_subjects: int | None = None,
                        seed: int = 0, root=None) -> KLCohort:
    """Chen KL crops split into train / internal validation (by subject) / untouched val.

    Parameters
    ----------
    internal_fraction : float
        Share of training subjects held out for epoch selection.
    n_subjects : int, optional
        Keep about this many training subjects (grade-stratified) before carving the
        internal split; ``None`` keeps all. The reported ``val`` split is never cut.
    seed : int
    root : path, optional
        The ``chen_kl_radiographs`` folder (default under ``$KNEELIB_DATA``).

    Raises
    ------
    ChenKLDataError
        If a split is empty or a subject appears in both ``train`` and ``val``.
    """
    if root is None:
        from kneelib.config import data_root

        root = data_root() / CHEN_KL_FOLDER
    table = read_chen_kl(root)
    train_all = table[table["split"] == "train"]
    val = table[table["split"] == "val"].reset_index(drop=True)
    labels = Path(root) / "labels.csv"
    if train_all.empty or val.empty:
        raise ChenKLDataError(f"Chen KL table needs 'train' and 'val' rows; splits found: "
                              f"{sorted(table['split'].unique())}", path=labels, reason="split missing")
    overlap = set(train_all["subject_id"]) & set(val["subject_id"])
    if overlap:
        raise ChenKLDataError(f"{len(overlap)} subject(s) in both train and val, e.g. {sorted(overlap)[:3]}",
                              path=labels, reason="subject in both splits")
    train_all = stratified_subject_subset(train_all, n_subjects, seed=seed)
    train, internal_val = carve_internal_validation(train_all, internal_fraction, seed=seed)
    return KLCohort(train, internal_val, val, table.attrs.get("qc", pd.DataFrame()))


def cohort_summary(cohort: KLCohort) -> pd.DataFrame:
    """Knees per KL grade and subjects per part of the split (the chapter's data table)."""
    rows = {}
    for name, part in (("train", cohort.train), ("internal validation", cohort.internal_val),
                       ("val (reported)", cohort.val)):
        counts = part["kl_grade"].value_counts().reindex(range(5), fill_value=0)
        rows[name] = {**{f"KL {g}": int(c) for g, c in counts.items()},
                      "knees": len(part), "subjects": part["subject_id"].nunique()}
    return pd.DataFrame(rows).T
